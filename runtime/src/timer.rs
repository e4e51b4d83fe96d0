//! Timers: `send_after` and `cancel_timer`, served by one thread.
//!
//! Pending timers sit in a map by id (so a cancel is O(1) and answers
//! whether the timer was still pending) and in a heap by deadline. A
//! cancelled timer's heap entry stays until its deadline and is skipped.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::message::{Envelope, Message};
use crate::node::{NodeInner, Sched};
use crate::pid::{Pid, TimerRef};

pub(crate) struct Timers {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    pending: HashMap<u64, (Pid, Message)>,
    shutdown: bool,
}

impl Timers {
    pub(crate) fn new() -> Timers {
        Timers { state: Mutex::new(State::default()), wake: Condvar::new() }
    }

    pub(crate) fn add(&self, timer: TimerRef, delay: Duration, to: Pid, message: Message) {
        let at = Instant::now() + delay;
        let mut state = self.state.lock();
        let earliest = state.deadlines.peek().is_none_or(|Reverse((first, _))| at < *first);
        state.deadlines.push(Reverse((at, timer.0)));
        state.pending.insert(timer.0, (to, message));
        if earliest {
            self.wake.notify_one();
        }
    }

    pub(crate) fn cancel(&self, timer: TimerRef) -> bool {
        self.state.lock().pending.remove(&timer.0).is_some()
    }

    pub(crate) fn shutdown(&self) {
        self.state.lock().shutdown = true;
        self.wake.notify_one();
    }

    /// The timer thread: fires due timers, sleeps until the next deadline.
    pub(crate) fn run(&self, node: &Arc<NodeInner>) {
        let mut state = self.state.lock();
        while !state.shutdown {
            let now = Instant::now();
            let mut due = Vec::new();
            while let Some(Reverse((at, id))) = state.deadlines.peek().copied() {
                if at > now {
                    break;
                }
                state.deadlines.pop();
                if let Some(fired) = state.pending.remove(&id) {
                    due.push(fired);
                }
            }
            if !due.is_empty() {
                drop(state);
                for (to, message) in due {
                    // A timer for a dead process is dropped, as in Erlang.
                    let _ = node.deliver(to, Envelope::Info(message), Sched::Global);
                }
                state = self.state.lock();
                continue;
            }
            match state.deadlines.peek().copied() {
                Some(Reverse((at, _))) => {
                    self.wake.wait_until(&mut state, at);
                }
                None => self.wake.wait(&mut state),
            }
        }
    }
}
