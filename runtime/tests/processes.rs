//! Integration tests of processes through the public API: spawn, send, call,
//! names, ordering, links, monitors, timers, panics, suspend/resume, budget
//! fairness and the watchdog.
//!
//! Every wait is bounded; absence of a message is shown with a marker sent
//! after the point where the unwanted message would have arrived.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use relive_runtime::{
    Actor, CallError, Ctx, Down, Exit, ExitReason, LinkError, Message, MonitorRef, Node, NodeConfig, Pid,
    RegisterError, ReplyTo, SendError, SpawnError, SuspendError, actor_fn,
};

/// Upper bound of every wait that should succeed.
const WAIT: Duration = Duration::from_secs(2);

fn start() -> Node {
    Node::start(NodeConfig { workers: 2, ..NodeConfig::default() })
}

/// Polls `cond` until it holds or `timeout` passes.
fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// The next message from a recording channel, as a `T`.
fn recv<T: Any>(rx: &Receiver<Message>) -> T {
    let message = rx
        .recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("no message of type {} arrived", std::any::type_name::<T>()));
    message.downcast::<T>().unwrap_or_else(|_| {
        panic!("expected a message of type {}, got another type", std::any::type_name::<T>())
    })
}

fn call<R: Any>(node: &Node, to: Pid, request: impl Any + Send) -> R {
    node.call(to, request, WAIT)
        .expect("call failed")
        .downcast::<R>()
        .unwrap_or_else(|_| panic!("reply is not a {}", std::any::type_name::<R>()))
}

/// A marker message: used to show that nothing arrived before it.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Marker(u32);

// ---------------------------------------------------------------------------
// Test actors

/// Records every plain message and cast on a channel; answers commands by
/// call, so a test can make it link, monitor, trap exits or call others.
struct Puppet {
    tx: Sender<Message>,
}

struct SpawnLink(Box<dyn Actor>);
struct LinkTo(Pid);
struct MonitorPid(Pid);
struct Demonitor(MonitorRef);
struct Trap(bool);
struct Ping;
/// Make the puppet call `to` with `request` and answer with the result.
struct CallOther(Pid, u32, Duration);
/// Make the puppet call itself.
struct CallSelf;
/// Make the puppet call itself by its registered name.
struct CallSelfByName(&'static str);
/// Recorded by the puppet when it gets a cast (not a plain message).
struct CastGot(Message);

impl Actor for Puppet {
    fn handle(&mut self, message: Message, _ctx: &mut Ctx<'_>) {
        let _ = self.tx.send(message);
    }

    fn handle_cast(&mut self, message: Message, _ctx: &mut Ctx<'_>) {
        let _ = self.tx.send(Message::new(CastGot(message)));
    }

    fn handle_call(&mut self, request: Message, reply: ReplyTo, ctx: &mut Ctx<'_>) {
        let request = match request.downcast::<SpawnLink>() {
            Ok(SpawnLink(actor)) => return reply.reply_with(ctx.spawn_link_boxed(actor)),
            Err(other) => other,
        };
        let request = match request.downcast::<LinkTo>() {
            Ok(LinkTo(pid)) => return reply.reply_with(ctx.link(pid)),
            Err(other) => other,
        };
        let request = match request.downcast::<MonitorPid>() {
            Ok(MonitorPid(pid)) => return reply.reply_with(ctx.monitor(pid)),
            Err(other) => other,
        };
        let request = match request.downcast::<Demonitor>() {
            Ok(Demonitor(monitor)) => return reply.reply_with(ctx.demonitor(monitor)),
            Err(other) => other,
        };
        let request = match request.downcast::<Trap>() {
            Ok(Trap(on)) => return reply.reply_with(ctx.trap_exit(on)),
            Err(other) => other,
        };
        let request = match request.downcast::<CallOther>() {
            Ok(CallOther(to, n, timeout)) => {
                let started = Instant::now();
                let result = ctx.call(to, n, timeout).map(|m| *m.downcast_ref::<u32>().expect("u32 reply"));
                return reply.reply_with((result, started.elapsed()));
            }
            Err(other) => other,
        };
        let request = match request.downcast::<CallSelf>() {
            Ok(CallSelf) => {
                let started = Instant::now();
                let result = ctx.call(ctx.pid(), 1u32, Duration::from_secs(5)).map(|_| ());
                return reply.reply_with((result, started.elapsed()));
            }
            Err(other) => other,
        };
        let request = match request.downcast::<CallSelfByName>() {
            Ok(CallSelfByName(name)) => {
                let result = ctx.call(name, 1u32, Duration::from_secs(5)).map(|_| ());
                return reply.reply_with(result);
            }
            Err(other) => other,
        };
        match request.downcast::<Ping>() {
            Ok(Ping) => reply.reply_with("pong"),
            Err(_) => panic!("puppet: unknown request"),
        }
    }
}

fn puppet(node: &Node) -> (Pid, Receiver<Message>) {
    let (tx, rx) = mpsc::channel();
    let pid = node.spawn_sync(Puppet { tx }, WAIT).expect("spawn puppet");
    (pid, rx)
}

/// A plain process that obeys `ExitReason` (stop with it) and `Boom`
/// (panic with the text) messages and answers `Ping`.
struct Stopper;

struct Boom(&'static str);

impl Actor for Stopper {
    fn handle(&mut self, message: Message, ctx: &mut Ctx<'_>) {
        let message = match message.downcast::<ExitReason>() {
            Ok(reason) => return ctx.stop(reason),
            Err(other) => other,
        };
        if let Ok(Boom(text)) = message.downcast::<Boom>() {
            panic!("{text}");
        }
    }

    fn handle_call(&mut self, _request: Message, reply: ReplyTo, _ctx: &mut Ctx<'_>) {
        reply.reply_with("pong");
    }
}

/// Answers `u32` calls with twice the number.
struct Doubler;

impl Actor for Doubler {
    fn handle(&mut self, _message: Message, _ctx: &mut Ctx<'_>) {}

    fn handle_call(&mut self, request: Message, reply: ReplyTo, _ctx: &mut Ctx<'_>) {
        let n = request.downcast::<u32>().expect("u32 request");
        reply.reply_with(n * 2);
    }
}

/// Keeps every call's `ReplyTo` and answers them (with request × 10) only
/// when it gets `Release`; stops on an `ExitReason` message.
struct Deferrer {
    stored: Vec<(u32, ReplyTo)>,
    events: Sender<&'static str>,
}

struct Release;

impl Actor for Deferrer {
    fn handle(&mut self, message: Message, ctx: &mut Ctx<'_>) {
        let message = match message.downcast::<ExitReason>() {
            Ok(reason) => return ctx.stop(reason),
            Err(other) => other,
        };
        if message.is::<Release>() {
            for (n, reply) in self.stored.drain(..) {
                reply.reply_with(n * 10);
            }
            let _ = self.events.send("replied");
        }
    }

    fn handle_call(&mut self, request: Message, reply: ReplyTo, _ctx: &mut Ctx<'_>) {
        let n = request.downcast::<u32>().expect("u32 request");
        self.stored.push((n, reply));
        let _ = self.events.send("stored");
    }
}

/// Blocks in its handler on a `Block` message until the test releases it
/// (or 5 s pass), then optionally stops; reports handled `u32` messages;
/// answers a `u32` call with n + 1000, others with "pong".
struct Gate {
    entered: Sender<()>,
    release: Receiver<()>,
    handled: Sender<u32>,
}

struct Block(Option<ExitReason>);

impl Actor for Gate {
    fn handle(&mut self, message: Message, ctx: &mut Ctx<'_>) {
        match message.downcast::<Block>() {
            Ok(Block(then)) => {
                let _ = self.entered.send(());
                let _ = self.release.recv_timeout(Duration::from_secs(5));
                if let Some(reason) = then {
                    ctx.stop(reason);
                }
            }
            Err(other) => {
                if let Ok(n) = other.downcast::<u32>() {
                    let _ = self.handled.send(n);
                }
            }
        }
    }

    fn handle_call(&mut self, request: Message, reply: ReplyTo, _ctx: &mut Ctx<'_>) {
        match request.downcast::<u32>() {
            Ok(n) => reply.reply_with(n + 1000),
            Err(_) => reply.reply_with("pong"),
        }
    }
}

struct GateHandles {
    entered: Receiver<()>,
    release: Sender<()>,
    handled: Receiver<u32>,
}

fn gate() -> (Gate, GateHandles) {
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let (handled_tx, handled) = mpsc::channel();
    (
        Gate { entered: entered_tx, release: release_rx, handled: handled_tx },
        GateHandles { entered, release, handled },
    )
}

// ---------------------------------------------------------------------------
// spawn / send / self

#[test]
fn a_process_knows_its_pid_and_gets_sends_in_handle_and_casts_in_handle_cast() {
    let node = start();
    struct Me(Sender<(Pid, &'static str, u32)>);
    impl Actor for Me {
        fn init(&mut self, ctx: &mut Ctx<'_>) -> Result<(), ExitReason> {
            let _ = self.0.send((ctx.pid(), "init", 0));
            Ok(())
        }
        fn handle(&mut self, message: Message, ctx: &mut Ctx<'_>) {
            let n = message.downcast::<u32>().expect("u32");
            let _ = self.0.send((ctx.pid(), "handle", n));
        }
        fn handle_cast(&mut self, message: Message, ctx: &mut Ctx<'_>) {
            let n = message.downcast::<u32>().expect("u32");
            let _ = self.0.send((ctx.pid(), "cast", n));
        }
    }
    let (tx, rx) = mpsc::channel();
    let pid = node.spawn(Me(tx)).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), (pid, "init", 0));
    assert!(node.is_alive(pid));
    assert!(node.processes().contains(&pid));

    node.send(pid, 1u32).unwrap();
    node.cast(pid, 2u32).unwrap();
    node.send(pid, 3u32).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), (pid, "handle", 1));
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), (pid, "cast", 2));
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), (pid, "handle", 3));

    // From a process: ctx.send reaches handle, ctx.cast reaches handle_cast.
    let relay = node
        .spawn(actor_fn(move |message, ctx| {
            let (to, n) = message.downcast::<(Pid, u32)>().expect("(Pid, u32)");
            ctx.send(to, n).unwrap();
            ctx.cast(to, n + 1).unwrap();
        }))
        .unwrap();
    node.send(relay, (pid, 10u32)).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), (pid, "handle", 10));
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), (pid, "cast", 11));

    // The test puppet tells casts from plain messages too.
    let (puppet, prx) = puppet(&node);
    node.cast(puppet, Marker(5)).unwrap();
    node.send(puppet, Marker(6)).unwrap();
    let CastGot(cast) = recv::<CastGot>(&prx);
    assert_eq!(cast.downcast::<Marker>().ok(), Some(Marker(5)));
    assert_eq!(recv::<Marker>(&prx), Marker(6));
    node.shutdown();
}

#[test]
fn a_plain_actor_gets_casts_in_handle_by_default_and_a_message_passes_through_unwrapped() {
    let node = start();
    let (tx, rx) = mpsc::channel::<Message>();
    let pid = node
        .spawn(actor_fn(move |message, _ctx| {
            let _ = tx.send(message);
        }))
        .unwrap();
    node.cast(pid, 5u8).unwrap();
    // A Message sent as such arrives as its content, not as Message-in-Message.
    node.send(pid, Message::new(6u8)).unwrap();
    assert_eq!(recv::<u8>(&rx), 5);
    assert_eq!(recv::<u8>(&rx), 6);
    node.shutdown();
}

// ---------------------------------------------------------------------------
// pids

#[test]
fn pids_are_not_reused_while_held() {
    let node = start();
    struct Quit;
    impl Actor for Quit {
        fn init(&mut self, ctx: &mut Ctx<'_>) -> Result<(), ExitReason> {
            ctx.stop(ExitReason::Normal);
            Ok(())
        }
        fn handle(&mut self, _message: Message, _ctx: &mut Ctx<'_>) {
            unreachable!("Quit stops in init");
        }
    }
    let mut held: Vec<Pid> = Vec::new();
    let mut seen: HashSet<Pid> = HashSet::new();
    let mut max_serial: HashMap<u32, u32> = HashMap::new();
    let mut reused_slots = 0;
    for _round in 0..40 {
        let batch: Vec<Pid> = (0..50).map(|_| node.spawn(Quit).unwrap()).collect();
        for &pid in &batch {
            assert!(seen.insert(pid), "pid {pid} was issued twice");
            assert_ne!(pid, Pid::NODE);
            if let Some(&previous) = max_serial.get(&pid.index()) {
                assert!(
                    pid.serial() > previous,
                    "slot {} reused with serial {} after serial {previous}",
                    pid.index(),
                    pid.serial()
                );
                reused_slots += 1;
            }
            max_serial.insert(pid.index(), pid.serial());
        }
        assert!(wait_until(WAIT, || batch.iter().all(|p| !node.is_alive(*p))), "processes did not exit");
        held.extend(batch);
    }
    assert!(reused_slots > 0, "no slot was reused: the test proves nothing");
    // A live population on reused slots, then check every old pid.
    let live: Vec<Pid> = (0..100).map(|_| node.spawn(Stopper).unwrap()).collect();
    for pid in &live {
        assert!(!seen.contains(pid), "live pid {pid} was issued before");
    }
    for &old in &held {
        assert!(!node.is_alive(old), "old pid {old} is alive again");
        assert_eq!(node.send(old, 1u32), Err(SendError::NoProc(old)));
        assert_eq!(node.message_queue_len(old), None);
    }
    for pid in &live {
        assert_eq!(call::<&str>(&node, *pid, Ping), "pong");
    }
    node.shutdown();
}

#[test]
fn send_to_a_dead_pid_is_noproc_and_reaches_no_one() {
    let node = start();
    // On a fresh node, the next process takes the freed slot of the dead one.
    let dead = node.spawn(Stopper).unwrap();
    let waiter = node.exit_waiter(dead);
    node.exit(dead, ExitReason::Kill);
    assert_eq!(waiter.wait(WAIT), Some(ExitReason::Killed));
    let (heir, rx) = puppet(&node);
    assert_eq!(heir.index(), dead.index(), "slot reuse expected (FIFO free list)");
    assert!(heir.serial() > dead.serial());
    let count = node.process_count();

    assert_eq!(node.send(dead, Marker(1)), Err(SendError::NoProc(dead)));
    assert_eq!(node.cast(dead, Marker(2)), Err(SendError::NoProc(dead)));
    assert_eq!(node.call(dead, Ping, WAIT).unwrap_err(), CallError::NoProc(dead));
    assert_eq!(node.process_count(), count);
    assert!(!node.is_alive(dead));
    // The process on the reused slot got none of it.
    node.send(heir, Marker(3)).unwrap();
    assert_eq!(recv::<Marker>(&rx), Marker(3));

    assert_eq!(node.send("nobody", 1u32), Err(SendError::NotRegistered("nobody".into())));
    assert_eq!(node.cast("nobody", 1u32), Err(SendError::NotRegistered("nobody".into())));
    node.shutdown();
}

// ---------------------------------------------------------------------------
// call

#[test]
fn call_round_trip() {
    let node = start();
    let pid = node.spawn(Doubler).unwrap();
    for n in 0..100u32 {
        assert_eq!(call::<u32>(&node, pid, n), n * 2);
    }
    node.shutdown();
}

#[test]
fn deferred_reply_answers_the_call_later() {
    let node = start();
    let (events_tx, events) = mpsc::channel();
    let pid = node.spawn(Deferrer { stored: Vec::new(), events: events_tx }).unwrap();
    let (done_tx, done) = mpsc::channel();
    let caller = {
        let node = node.clone();
        thread::spawn(move || {
            let _ = done_tx.send(node.call(pid, 7u32, WAIT));
        })
    };
    assert_eq!(events.recv_timeout(WAIT).unwrap(), "stored");
    // The handler returned without replying: the call is still waiting.
    assert!(done.recv_timeout(Duration::from_millis(20)).is_err());
    node.send(pid, Release).unwrap();
    let reply = done.recv_timeout(WAIT).unwrap().expect("deferred reply");
    assert_eq!(reply.downcast::<u32>().unwrap(), 70);
    caller.join().unwrap();
    node.shutdown();
}

#[test]
fn calling_a_dead_pid_fails_fast_with_noproc_and_an_unknown_name_with_not_registered() {
    let node = start();
    let pid = node.spawn(Stopper).unwrap();
    let waiter = node.exit_waiter(pid);
    node.send(pid, ExitReason::Normal).unwrap();
    assert_eq!(waiter.wait(WAIT), Some(ExitReason::Normal));
    let started = Instant::now();
    assert_eq!(node.call(pid, Ping, Duration::from_secs(10)).unwrap_err(), CallError::NoProc(pid));
    assert_eq!(
        node.call("ghost", Ping, Duration::from_secs(10)).unwrap_err(),
        CallError::NotRegistered("ghost".into())
    );
    assert!(started.elapsed() < Duration::from_millis(1500));
    node.shutdown();
}

#[test]
fn external_call_times_out_and_the_late_reply_is_discarded() {
    let node = start();
    let (events_tx, events) = mpsc::channel();
    let pid = node.spawn(Deferrer { stored: Vec::new(), events: events_tx }).unwrap();
    let timeout = Duration::from_millis(50);
    let started = Instant::now();
    assert_eq!(node.call(pid, 1u32, timeout).unwrap_err(), CallError::Timeout(pid, timeout));
    assert!(started.elapsed() >= timeout);
    assert_eq!(events.recv_timeout(WAIT).unwrap(), "stored");
    // The late reply goes nowhere (and does not break the callee).
    node.send(pid, Release).unwrap();
    assert_eq!(events.recv_timeout(WAIT).unwrap(), "replied");
    // A new call from the same thread gets its own reply, not the stale one.
    let (done_tx, done) = mpsc::channel();
    let caller = {
        let node = node.clone();
        thread::spawn(move || {
            let _ = done_tx.send(node.call(pid, 2u32, WAIT).map(|m| m.downcast::<u32>().ok()));
        })
    };
    assert_eq!(events.recv_timeout(WAIT).unwrap(), "stored");
    node.send(pid, Release).unwrap();
    assert_eq!(done.recv_timeout(WAIT).unwrap(), Ok(Some(20)));
    caller.join().unwrap();
    assert!(node.is_alive(pid));
    node.shutdown();
}

#[test]
fn a_process_whose_call_timed_out_never_gets_the_late_reply_in_its_mailbox() {
    let node = start();
    let (events_tx, events) = mpsc::channel();
    let callee = node.spawn_sync(Deferrer { stored: Vec::new(), events: events_tx }, WAIT).unwrap();
    let (caller, rx) = puppet(&node);
    let timeout = Duration::from_millis(50);
    let (result, elapsed) =
        call::<(Result<u32, CallError>, Duration)>(&node, caller, CallOther(callee, 1, timeout));
    assert_eq!(result, Err(CallError::Timeout(callee, timeout)));
    assert!(elapsed >= timeout);
    assert_eq!(events.recv_timeout(WAIT).unwrap(), "stored");
    node.send(callee, Release).unwrap();
    assert_eq!(events.recv_timeout(WAIT).unwrap(), "replied");
    // The reply happened before this marker was sent: had it gone to the
    // caller's mailbox, the caller would have recorded it first.
    node.send(caller, Marker(1)).unwrap();
    let first = rx.recv_timeout(WAIT).expect("the marker");
    assert!(
        first.is::<Marker>(),
        "the caller's mailbox got something other than the marker (the late reply?)"
    );
    assert!(rx.try_recv().is_err(), "unexpected extra message");
    // The caller still works normally.
    let doubler = node.spawn_sync(Doubler, WAIT).unwrap();
    let (result, _) = call::<(Result<u32, CallError>, Duration)>(&node, caller, CallOther(doubler, 21, WAIT));
    assert_eq!(result, Ok(42));
    node.shutdown();
}

/// A call from a process to an *idle* process runs the callee inline on the
/// caller's worker. The timeout must still hold: a reply produced after the
/// timeout is a timeout (node.rs says so), and the caller must not be blocked
/// for the callee's whole handler and then told Ok.
#[test]
fn a_call_from_a_process_to_a_slow_idle_callee_still_times_out() {
    let node = start();
    struct Slow;
    impl Actor for Slow {
        fn handle(&mut self, _message: Message, _ctx: &mut Ctx<'_>) {}
        fn handle_call(&mut self, request: Message, reply: ReplyTo, _ctx: &mut Ctx<'_>) {
            thread::sleep(Duration::from_millis(300));
            reply.reply_with(request.downcast::<u32>().unwrap());
        }
    }
    let slow = node.spawn_sync(Slow, WAIT).unwrap();
    let (caller, _rx) = puppet(&node);
    let timeout = Duration::from_millis(50);
    let (result, elapsed) =
        call::<(Result<u32, CallError>, Duration)>(&node, caller, CallOther(slow, 9, timeout));
    assert_eq!(
        result,
        Err(CallError::Timeout(slow, timeout)),
        "call with a {timeout:?} timeout returned {result:?} after {elapsed:?}"
    );
    node.shutdown();
}

#[test]
fn a_callee_that_exits_with_the_call_queued_fails_it_with_exited() {
    let node = start();
    let (actor, gate) = gate();
    let pid = node.spawn(actor).unwrap();
    node.send(pid, Block(Some(ExitReason::error("bye")))).unwrap();
    gate.entered.recv_timeout(WAIT).unwrap();
    let (done_tx, done) = mpsc::channel();
    let caller = {
        let node = node.clone();
        thread::spawn(move || {
            let _ = done_tx.send(node.call(pid, Ping, Duration::from_secs(10)).map(|_| ()));
        })
    };
    assert!(wait_until(WAIT, || node.message_queue_len(pid) == Some(1)));
    gate.release.send(()).unwrap();
    // Well before the call's own 10 s timeout.
    assert_eq!(
        done.recv_timeout(Duration::from_millis(1500)).unwrap(),
        Err(CallError::Exited(pid, ExitReason::error("bye")))
    );
    caller.join().unwrap();

    // Same with a kill while the call waits in a suspended mailbox.
    let pid = node.spawn_sync(Stopper, WAIT).unwrap();
    node.suspend(pid, WAIT).unwrap();
    let (done_tx, done) = mpsc::channel();
    let caller = {
        let node = node.clone();
        thread::spawn(move || {
            let _ = done_tx.send(node.call(pid, Ping, WAIT).map(|_| ()));
        })
    };
    assert!(wait_until(WAIT, || node.message_queue_len(pid) == Some(1)));
    node.exit(pid, ExitReason::Kill);
    assert_eq!(done.recv_timeout(WAIT).unwrap(), Err(CallError::Exited(pid, ExitReason::Killed)));
    caller.join().unwrap();
    node.shutdown();
}

/// The callee took the request (it holds the `ReplyTo` to answer later) and
/// then exits: the caller must learn the exit reason, as with gen_server:call.
#[test]
fn a_callee_that_exits_while_holding_a_deferred_reply_fails_the_call_with_exited() {
    let node = start();
    for (reason, expected) in
        [(Some(ExitReason::error("bye")), ExitReason::error("bye")), (None, ExitReason::Killed)]
    {
        let (events_tx, events) = mpsc::channel();
        let pid = node.spawn(Deferrer { stored: Vec::new(), events: events_tx }).unwrap();
        let (done_tx, done) = mpsc::channel();
        let caller = {
            let node = node.clone();
            thread::spawn(move || {
                let _ = done_tx.send(node.call(pid, 1u32, WAIT).map(|_| ()));
            })
        };
        assert_eq!(events.recv_timeout(WAIT).unwrap(), "stored");
        match reason {
            Some(reason) => node.send(pid, reason).unwrap(),
            None => node.exit(pid, ExitReason::Kill),
        }
        assert_eq!(done.recv_timeout(WAIT).unwrap(), Err(CallError::Exited(pid, expected)));
        caller.join().unwrap();
    }
    node.shutdown();
}

#[test]
fn a_callee_that_panics_in_handle_call_fails_the_call_with_crashed() {
    let node = start();
    struct Crashy;
    impl Actor for Crashy {
        fn handle(&mut self, _message: Message, _ctx: &mut Ctx<'_>) {}
        fn handle_call(&mut self, _request: Message, _reply: ReplyTo, _ctx: &mut Ctx<'_>) {
            panic!("crashy call handler");
        }
    }
    let pid = node.spawn_sync(Crashy, WAIT).unwrap();
    let waiter = node.exit_waiter(pid);
    let started = Instant::now();
    assert_eq!(node.call(pid, Ping, Duration::from_secs(10)).unwrap_err(), CallError::Crashed(pid));
    // Failed at once, not by waiting for the timeout.
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(waiter.wait(WAIT), Some(ExitReason::Panic("crashy call handler".into())));
    node.shutdown();
}

#[test]
fn a_callee_that_drops_the_request_fails_the_call_with_no_reply() {
    let node = start();
    // Stopper's default would answer; actor_fn uses the default handle_call,
    // which drops the request.
    let pid = node.spawn(actor_fn(|_m, _c| {})).unwrap();
    assert_eq!(node.call(pid, Ping, WAIT).unwrap_err(), CallError::NoReply(pid));
    assert!(node.is_alive(pid));
    node.shutdown();
}

#[test]
fn a_process_can_call_another_process_idle_busy_or_nested() {
    let node = start();
    let (caller, _rx) = puppet(&node);
    // Idle callee (runs inline on the caller's worker).
    let doubler = node.spawn_sync(Doubler, WAIT).unwrap();
    for n in 0..50 {
        let (result, _) =
            call::<(Result<u32, CallError>, Duration)>(&node, caller, CallOther(doubler, n, WAIT));
        assert_eq!(result, Ok(n * 2));
    }
    // Busy callee: it is inside a handler when the call arrives.
    let (actor, gate) = gate();
    let busy = node.spawn_sync(actor, WAIT).unwrap();
    node.send(busy, Block(None)).unwrap();
    gate.entered.recv_timeout(WAIT).unwrap();
    let (done_tx, done) = mpsc::channel();
    let asker = {
        let node = node.clone();
        thread::spawn(move || {
            let _ = done_tx.send(
                node.call(caller, CallOther(busy, 5, WAIT), WAIT)
                    .map(|m| m.downcast::<(Result<u32, CallError>, Duration)>().ok()),
            );
        })
    };
    assert!(wait_until(WAIT, || node.message_queue_len(busy) == Some(1)));
    gate.release.send(()).unwrap();
    let (result, _) = done.recv_timeout(WAIT).unwrap().expect("outer call").expect("reply type");
    assert_eq!(result, Ok(1005));
    asker.join().unwrap();
    // Nested: caller -> chain -> doubler, both inline.
    struct Chain(Pid);
    impl Actor for Chain {
        fn handle(&mut self, _message: Message, _ctx: &mut Ctx<'_>) {}
        fn handle_call(&mut self, request: Message, reply: ReplyTo, ctx: &mut Ctx<'_>) {
            let n = request.downcast::<u32>().unwrap();
            let inner = ctx.call(self.0, n + 1, WAIT).unwrap();
            reply.reply_with(inner.downcast::<u32>().unwrap());
        }
    }
    let chain = node.spawn_sync(Chain(doubler), WAIT).unwrap();
    let (result, _) = call::<(Result<u32, CallError>, Duration)>(&node, caller, CallOther(chain, 4, WAIT));
    assert_eq!(result, Ok(10));
    node.shutdown();
}

#[test]
fn a_process_calling_itself_gets_calling_self_at_once() {
    let node = start();
    let (pid, _rx) = puppet(&node);
    let (result, elapsed) = call::<(Result<(), CallError>, Duration)>(&node, pid, CallSelf);
    assert_eq!(result, Err(CallError::CallingSelf(pid)));
    assert!(elapsed < Duration::from_millis(1000));
    node.register("narcissus", pid).unwrap();
    assert_eq!(
        call::<Result<(), CallError>>(&node, pid, CallSelfByName("narcissus")),
        Err(CallError::CallingSelf(pid))
    );
    assert_eq!(call::<&str>(&node, pid, Ping), "pong");
    node.shutdown();
}

// ---------------------------------------------------------------------------
// registered names

#[test]
fn registered_names() {
    let node = start();
    let (a, rx) = puppet(&node);
    let b = node.spawn(Stopper).unwrap();
    assert_eq!(node.whereis("alpha"), None);
    node.register("alpha", a).unwrap();
    assert_eq!(node.whereis("alpha"), Some(a));
    node.send("alpha", Marker(1)).unwrap();
    assert_eq!(recv::<Marker>(&rx), Marker(1));
    assert_eq!(node.call("alpha", Ping, WAIT).unwrap().downcast::<&str>().unwrap(), "pong");
    assert_eq!(node.register("alpha", b), Err(RegisterError::NameTaken { name: "alpha".into(), holder: a }));
    assert_eq!(node.register("alpha", a), Err(RegisterError::NameTaken { name: "alpha".into(), holder: a }));
    assert_eq!(node.register("beta", a), Err(RegisterError::AlreadyNamed { pid: a, name: "alpha".into() }));
    node.register("beta", b).unwrap();
    assert_eq!(node.registered(), vec![("alpha".into(), a), ("beta".into(), b)]);
    // Unregister frees the name and the process may take another.
    assert!(node.unregister("beta"));
    assert!(!node.unregister("beta"));
    assert_eq!(node.whereis("beta"), None);
    node.register("gamma", b).unwrap();

    // The name goes when the process exits, and can then be reused.
    let waiter = node.exit_waiter(a);
    node.exit(a, ExitReason::Kill);
    assert_eq!(waiter.wait(WAIT), Some(ExitReason::Killed));
    assert!(wait_until(WAIT, || node.whereis("alpha").is_none()));
    assert_eq!(node.send("alpha", Marker(2)), Err(SendError::NotRegistered("alpha".into())));
    assert_eq!(node.register("delta", a), Err(RegisterError::NoProc(a)));
    let (c, rx_c) = puppet(&node);
    node.register("alpha", c).unwrap();
    node.send("alpha", Marker(3)).unwrap();
    assert_eq!(recv::<Marker>(&rx_c), Marker(3));
    assert!(rx.try_recv().is_err(), "the dead holder got a message");

    // A process registers itself.
    let (tx, self_rx) = mpsc::channel();
    let d = node
        .spawn(actor_fn(move |message, ctx| {
            if message.is::<Marker>() {
                let _ = tx.send(ctx.register("epsilon"));
            }
        }))
        .unwrap();
    node.send(d, Marker(0)).unwrap();
    assert_eq!(self_rx.recv_timeout(WAIT).unwrap(), Ok(()));
    assert_eq!(node.whereis("epsilon"), Some(d));
    node.shutdown();
}

// ---------------------------------------------------------------------------
// ordering

/// Checks per-sender order: messages are `(sender, seq)`; answers a call
/// with `(count, violations)`.
struct OrderChecker {
    next: HashMap<u32, u64>,
    count: u64,
    violations: u64,
}

impl OrderChecker {
    fn new() -> OrderChecker {
        OrderChecker { next: HashMap::new(), count: 0, violations: 0 }
    }
}

impl Actor for OrderChecker {
    fn handle(&mut self, message: Message, _ctx: &mut Ctx<'_>) {
        let (sender, seq) = message.downcast::<(u32, u64)>().expect("(u32, u64)");
        let next = self.next.entry(sender).or_insert(0);
        if seq != *next {
            self.violations += 1;
        }
        *next = seq + 1;
        self.count += 1;
    }

    fn handle_call(&mut self, _request: Message, reply: ReplyTo, _ctx: &mut Ctx<'_>) {
        reply.reply_with((self.count, self.violations));
    }
}

#[test]
fn one_sender_ten_thousand_messages_arrive_in_order() {
    let node = start();
    let receiver = node.spawn(OrderChecker::new()).unwrap();
    for seq in 0..10_000u64 {
        node.send(receiver, (0u32, seq)).unwrap();
    }
    assert_eq!(call::<(u64, u64)>(&node, receiver, Ping), (10_000, 0));

    // And from a process.
    let receiver = node.spawn(OrderChecker::new()).unwrap();
    let sender = node
        .spawn(actor_fn(move |message, ctx| {
            if message.is::<Marker>() {
                for seq in 0..10_000u64 {
                    ctx.send(receiver, (1u32, seq)).unwrap();
                }
            }
        }))
        .unwrap();
    node.send(sender, Marker(0)).unwrap();
    assert!(wait_until(WAIT, || call::<(u64, u64)>(&node, receiver, Ping).0 == 10_000));
    assert_eq!(call::<(u64, u64)>(&node, receiver, Ping), (10_000, 0));
    node.shutdown();
}

#[test]
fn concurrent_senders_each_keep_their_order() {
    let node = start();
    let receiver = node.spawn(OrderChecker::new()).unwrap();
    const PER_SENDER: u64 = 5_000;
    let threads: Vec<_> = (0..3u32)
        .map(|id| {
            let node = node.clone();
            thread::spawn(move || {
                for seq in 0..PER_SENDER {
                    node.send(receiver, (id, seq)).unwrap();
                }
            })
        })
        .collect();
    let senders: Vec<Pid> = (100..103u32)
        .map(|id| {
            node.spawn(actor_fn(move |message, ctx| {
                if message.is::<Marker>() {
                    for seq in 0..PER_SENDER {
                        // Alternate send and cast: both go to the same queue.
                        if seq % 2 == 0 {
                            ctx.send(receiver, (id, seq)).unwrap();
                        } else {
                            ctx.cast(receiver, (id, seq)).unwrap();
                        }
                    }
                }
            }))
            .unwrap()
        })
        .collect();
    for pid in &senders {
        node.send(*pid, Marker(0)).unwrap();
    }
    for t in threads {
        t.join().unwrap();
    }
    let total = 6 * PER_SENDER;
    assert!(wait_until(WAIT, || call::<(u64, u64)>(&node, receiver, Ping).0 == total));
    assert_eq!(call::<(u64, u64)>(&node, receiver, Ping), (total, 0));
    node.shutdown();
}

// ---------------------------------------------------------------------------
// links

fn spawn_link(node: &Node, parent: Pid, actor: impl Actor) -> Pid {
    call::<Result<Pid, SpawnError>>(node, parent, SpawnLink(Box::new(actor))).expect("spawn_link")
}

#[test]
fn a_linked_crash_kills_the_partner_with_the_same_reason() {
    let node = start();
    let (parent, _rx) = puppet(&node);
    let child = spawn_link(&node, parent, Stopper);
    let parent_exit = node.exit_waiter(parent);
    let child_exit = node.exit_waiter(child);
    node.send(child, Boom("child blew up")).unwrap();
    let reason = ExitReason::Panic("child blew up".into());
    assert_eq!(child_exit.wait(WAIT), Some(reason.clone()));
    assert_eq!(parent_exit.wait(WAIT), Some(reason));

    // And the other way round, with an error reason.
    let (parent, _rx) = puppet(&node);
    let child = spawn_link(&node, parent, Stopper);
    let (other, _rx2) = puppet(&node);
    let other_exit = node.exit_waiter(other);
    assert_eq!(call::<Result<(), LinkError>>(&node, other, LinkTo(child)), Ok(()));
    let child_exit = node.exit_waiter(child);
    node.exit(parent, ExitReason::error("parent failed"));
    assert_eq!(child_exit.wait(WAIT), Some(ExitReason::error("parent failed")));
    // The chain goes on: child's other link dies too.
    assert_eq!(other_exit.wait(WAIT), Some(ExitReason::error("parent failed")));
    node.shutdown();
}

#[test]
fn a_normal_exit_does_not_kill_a_non_trapping_partner() {
    let node = start();
    let (parent, rx) = puppet(&node);
    let child = spawn_link(&node, parent, Stopper);
    let child_exit = node.exit_waiter(child);
    node.send(child, ExitReason::Normal).unwrap();
    assert_eq!(child_exit.wait(WAIT), Some(ExitReason::Normal));
    // Shutdown is not normal: a shutdown exit kills a non-trapping partner.
    assert_eq!(call::<&str>(&node, parent, Ping), "pong");
    node.send(parent, Marker(1)).unwrap();
    assert_eq!(recv::<Marker>(&rx), Marker(1), "no Exit message without trap_exit");
    let child = spawn_link(&node, parent, Stopper);
    let parent_exit = node.exit_waiter(parent);
    node.send(child, ExitReason::Shutdown).unwrap();
    assert_eq!(parent_exit.wait(WAIT), Some(ExitReason::Shutdown));
    node.shutdown();
}

#[test]
fn a_trapping_partner_gets_exit_messages_and_survives() {
    let node = start();
    let (parent, rx) = puppet(&node);
    assert!(!call::<bool>(&node, parent, Trap(true)));
    for reason in
        [ExitReason::error("child failed"), ExitReason::Normal, ExitReason::Panic("child blew up".into())]
    {
        let child = spawn_link(&node, parent, Stopper);
        match &reason {
            ExitReason::Panic(_) => node.send(child, Boom("child blew up")).unwrap(),
            other => node.send(child, other.clone()).unwrap(),
        }
        assert_eq!(recv::<Exit>(&rx), Exit { from: child, reason: reason.clone() });
        assert!(node.is_alive(parent));
    }
    // An exit signal from outside comes from Pid::NODE.
    node.exit(parent, ExitReason::Normal);
    assert_eq!(recv::<Exit>(&rx), Exit { from: Pid::NODE, reason: ExitReason::Normal });
    node.exit(parent, ExitReason::error("go away"));
    assert_eq!(recv::<Exit>(&rx), Exit { from: Pid::NODE, reason: ExitReason::error("go away") });
    assert_eq!(call::<&str>(&node, parent, Ping), "pong");
    assert!(call::<bool>(&node, parent, Trap(false)));
    node.shutdown();
}

#[test]
fn kill_kills_a_trapping_process_and_its_links_see_killed() {
    let node = start();
    let (victim, _rx) = puppet(&node);
    call::<bool>(&node, victim, Trap(true));
    // A trapping partner and a non-trapping partner.
    let (tx, watcher_rx) = mpsc::channel();
    let watcher = spawn_link(&node, victim, Puppet { tx });
    call::<bool>(&node, watcher, Trap(true));
    let plain = spawn_link(&node, victim, Stopper);
    let victim_exit = node.exit_waiter(victim);
    let plain_exit = node.exit_waiter(plain);
    node.exit(victim, ExitReason::Kill);
    assert_eq!(victim_exit.wait(WAIT), Some(ExitReason::Killed));
    assert_eq!(plain_exit.wait(WAIT), Some(ExitReason::Killed));
    assert_eq!(recv::<Exit>(&watcher_rx), Exit { from: victim, reason: ExitReason::Killed });
    assert!(node.is_alive(watcher));
    node.shutdown();
}

#[test]
fn exit_signals_to_a_non_trapping_process() {
    let node = start();
    let pid = node.spawn_sync(Stopper, WAIT).unwrap();
    node.exit(pid, ExitReason::Normal);
    // A later call is answered: the normal signal was ignored, not queued.
    assert_eq!(call::<&str>(&node, pid, Ping), "pong");
    assert!(node.is_alive(pid));
    let waiter = node.exit_waiter(pid);
    node.exit(pid, ExitReason::error("terminated"));
    assert_eq!(waiter.wait(WAIT), Some(ExitReason::error("terminated")));
    assert!(!node.is_alive(pid));
    node.shutdown();
}

#[test]
fn linking_to_a_dead_pid_gives_noproc() {
    let node = start();
    let dead = node.spawn_sync(Stopper, WAIT).unwrap();
    let waiter = node.exit_waiter(dead);
    node.exit(dead, ExitReason::Kill);
    assert_eq!(waiter.wait(WAIT), Some(ExitReason::Killed));

    // A trapping process gets the error and an Exit message.
    let (trapper, rx) = puppet(&node);
    call::<bool>(&node, trapper, Trap(true));
    assert_eq!(call::<Result<(), LinkError>>(&node, trapper, LinkTo(dead)), Err(LinkError::NoProc(dead)));
    assert_eq!(recv::<Exit>(&rx), Exit { from: dead, reason: ExitReason::NoProc });
    assert!(node.is_alive(trapper));

    // A non-trapping process dies of it, as in Erlang.
    let (plain, _rx) = puppet(&node);
    let plain_exit = node.exit_waiter(plain);
    assert_eq!(call::<Result<(), LinkError>>(&node, plain, LinkTo(dead)), Err(LinkError::NoProc(dead)));
    assert_eq!(plain_exit.wait(WAIT), Some(ExitReason::NoProc));
    node.shutdown();
}

// ---------------------------------------------------------------------------
// monitors

#[test]
fn a_monitor_delivers_down_with_the_exit_reason() {
    let node = start();
    let (watcher, rx) = puppet(&node);
    let target = node.spawn(Stopper).unwrap();
    let monitor = call::<MonitorRef>(&node, watcher, MonitorPid(target));
    assert_eq!(monitor.target(), target);
    node.send(target, ExitReason::error("bye")).unwrap();
    assert_eq!(recv::<Down>(&rx), Down { monitor, pid: target, reason: ExitReason::error("bye") });
    // The watcher is not affected.
    assert_eq!(call::<&str>(&node, watcher, Ping), "pong");
    // Kill shows as killed; two monitors give two Downs.
    let target = node.spawn(Stopper).unwrap();
    let m1 = call::<MonitorRef>(&node, watcher, MonitorPid(target));
    let m2 = call::<MonitorRef>(&node, watcher, MonitorPid(target));
    assert_ne!(m1, m2);
    node.exit(target, ExitReason::Kill);
    let mut downs = vec![recv::<Down>(&rx), recv::<Down>(&rx)];
    downs.sort_by_key(|d| d.monitor == m2);
    assert_eq!(
        downs,
        vec![
            Down { monitor: m1, pid: target, reason: ExitReason::Killed },
            Down { monitor: m2, pid: target, reason: ExitReason::Killed }
        ]
    );
    node.shutdown();
}

#[test]
fn monitoring_a_dead_pid_delivers_down_noproc() {
    let node = start();
    let (watcher, rx) = puppet(&node);
    let target = node.spawn(Stopper).unwrap();
    let waiter = node.exit_waiter(target);
    node.send(target, ExitReason::Normal).unwrap();
    assert_eq!(waiter.wait(WAIT), Some(ExitReason::Normal));
    let monitor = call::<MonitorRef>(&node, watcher, MonitorPid(target));
    assert_eq!(recv::<Down>(&rx), Down { monitor, pid: target, reason: ExitReason::NoProc });
    // An exit waiter on a dead pid says noproc too.
    assert_eq!(node.exit_waiter(target).wait(WAIT), Some(ExitReason::NoProc));
    node.shutdown();
}

#[test]
fn demonitor_prevents_the_down() {
    let node = start();
    let (watcher, rx) = puppet(&node);
    let target = node.spawn(Stopper).unwrap();
    let monitor = call::<MonitorRef>(&node, watcher, MonitorPid(target));
    assert!(call::<bool>(&node, watcher, Demonitor(monitor)));
    assert!(!call::<bool>(&node, watcher, Demonitor(monitor)));
    let waiter = node.exit_waiter(target);
    node.send(target, ExitReason::error("bye")).unwrap();
    assert_eq!(waiter.wait(WAIT), Some(ExitReason::error("bye")));
    // Any Down would have been queued before the target left the table.
    node.send(watcher, Marker(1)).unwrap();
    let first = rx.recv_timeout(WAIT).unwrap();
    assert!(first.is::<Marker>(), "a Down arrived after demonitor");
    node.shutdown();
}

// ---------------------------------------------------------------------------
// timers

#[test]
fn send_after_delivers_no_earlier_than_the_delay() {
    let node = start();
    let (pid, rx) = puppet(&node);
    let delay = Duration::from_millis(80);
    let started = Instant::now();
    node.send_after(pid, Marker(1), delay);
    assert_eq!(recv::<Marker>(&rx), Marker(1));
    let elapsed = started.elapsed();
    assert!(elapsed >= delay, "delivered after {elapsed:?} < {delay:?}");
    assert!(elapsed < Duration::from_secs(1), "delivered only after {elapsed:?}");

    // Timers fire in deadline order, not in the order they were set.
    node.send_after(pid, Marker(3), Duration::from_millis(60));
    node.send_after(pid, Marker(2), Duration::from_millis(20));
    assert_eq!(recv::<Marker>(&rx), Marker(2));
    assert_eq!(recv::<Marker>(&rx), Marker(3));
    node.shutdown();
}

#[test]
fn a_cancelled_timer_never_fires() {
    let node = start();
    let (pid, rx) = puppet(&node);
    let timer = node.send_after(pid, Marker(1), Duration::from_millis(200));
    assert!(node.cancel_timer(timer));
    assert!(!node.cancel_timer(timer), "second cancel must say it is gone");
    // A later timer is the first thing to arrive.
    node.send_after(pid, Marker(2), Duration::from_millis(250));
    assert_eq!(recv::<Marker>(&rx), Marker(2));
    assert!(rx.try_recv().is_err());
    node.shutdown();
}

#[test]
fn cancelling_a_fired_timer_returns_false() {
    let node = start();
    let (pid, rx) = puppet(&node);
    let timer = node.send_after(pid, Marker(1), Duration::from_millis(5));
    assert_eq!(recv::<Marker>(&rx), Marker(1));
    assert!(!node.cancel_timer(timer));
    // A timer to a process that exits first is dropped quietly.
    let gone = node.spawn(Stopper).unwrap();
    let waiter = node.exit_waiter(gone);
    let timer = node.send_after(gone, Marker(9), Duration::from_millis(5));
    node.send(gone, ExitReason::Normal).unwrap();
    assert_eq!(waiter.wait(WAIT), Some(ExitReason::Normal));
    node.send_after(pid, Marker(2), Duration::from_millis(20));
    assert_eq!(recv::<Marker>(&rx), Marker(2));
    assert!(!node.cancel_timer(timer));
    node.shutdown();
}

#[test]
fn timers_from_inside_a_process() {
    let node = start();
    let (tx, rx) = mpsc::channel::<(&'static str, Option<bool>)>();
    let pid = node
        .spawn(actor_fn(move |message, ctx| {
            if let Some(Marker(n)) = message.downcast_ref::<Marker>() {
                match n {
                    0 => {
                        let doomed = ctx.send_after(ctx.pid(), Marker(99), Duration::from_millis(200));
                        let cancelled = ctx.cancel_timer(doomed);
                        ctx.send_after(ctx.pid(), Marker(1), Duration::from_millis(250));
                        let _ = tx.send(("set", Some(cancelled)));
                    }
                    1 => {
                        let _ = tx.send(("fired", None));
                    }
                    _ => {
                        let _ = tx.send(("cancelled timer fired", None));
                    }
                }
            }
        }))
        .unwrap();
    node.send(pid, Marker(0)).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), ("set", Some(true)));
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), ("fired", None));
    node.shutdown();
}

// ---------------------------------------------------------------------------
// panics

#[test]
fn a_panic_crashes_only_that_process() {
    let node = Node::start(NodeConfig { workers: 1, ..NodeConfig::default() });
    let (bystander, rx) = puppet(&node);
    let victim = node.spawn_sync(Stopper, WAIT).unwrap();
    let waiter = node.exit_waiter(victim);
    node.send(victim, Boom("kaboom 42")).unwrap();
    match waiter.wait(WAIT) {
        Some(ExitReason::Panic(text)) => assert!(text.contains("kaboom 42"), "{text}"),
        other => panic!("expected a panic exit, got {other:?}"),
    }
    assert!(!node.is_alive(victim));
    // Same node, same (only) worker: everything else still runs.
    assert_eq!(call::<&str>(&node, bystander, Ping), "pong");
    node.send(bystander, Marker(1)).unwrap();
    assert_eq!(recv::<Marker>(&rx), Marker(1));
    let fresh = node.spawn_sync(Doubler, WAIT).unwrap();
    assert_eq!(call::<u32>(&node, fresh, 4u32), 8);

    // A panic in init fails a synchronous spawn with that panic.
    struct BadInit;
    impl Actor for BadInit {
        fn init(&mut self, _ctx: &mut Ctx<'_>) -> Result<(), ExitReason> {
            panic!("init went wrong");
        }
        fn handle(&mut self, _message: Message, _ctx: &mut Ctx<'_>) {}
    }
    match node.spawn_sync(BadInit, WAIT) {
        Err(SpawnError::InitFailed(_, ExitReason::Panic(text))) => {
            assert!(text.contains("init went wrong"))
        }
        other => panic!("expected InitFailed(panic), got {other:?}"),
    }
    assert_eq!(call::<&str>(&node, bystander, Ping), "pong");
    node.shutdown();
}

// ---------------------------------------------------------------------------
// suspend / resume

#[test]
fn a_suspended_process_queues_messages_and_handles_them_in_order_on_resume() {
    let node = start();
    let (pid, rx) = puppet(&node);
    node.suspend(pid, WAIT).unwrap();
    for n in 0..100u32 {
        node.send(pid, Marker(n)).unwrap();
    }
    assert_eq!(node.message_queue_len(pid), Some(100));
    assert!(rx.recv_timeout(Duration::from_millis(30)).is_err(), "a suspended process handled a message");
    assert_eq!(node.message_queue_len(pid), Some(100));
    node.resume(pid).unwrap();
    for n in 0..100u32 {
        assert_eq!(recv::<Marker>(&rx), Marker(n));
    }
    assert!(wait_until(WAIT, || node.message_queue_len(pid) == Some(0)));
    assert_eq!(call::<&str>(&node, pid, Ping), "pong");
    node.shutdown();
}

#[test]
fn a_suspended_process_can_be_killed() {
    let node = start();
    let (pid, _rx) = puppet(&node);
    node.suspend(pid, WAIT).unwrap();
    node.send(pid, Marker(1)).unwrap();
    let waiter = node.exit_waiter(pid);
    node.exit(pid, ExitReason::Kill);
    assert_eq!(waiter.wait(WAIT), Some(ExitReason::Killed));
    assert!(!node.is_alive(pid));
    assert_eq!(node.resume(pid), Err(SuspendError::NoProc(pid)));
    node.shutdown();
}

#[test]
fn with_suspended_gives_the_actor_for_replacement() {
    let node = start();
    struct Version(u32, Sender<u32>);
    impl Actor for Version {
        fn handle(&mut self, _message: Message, _ctx: &mut Ctx<'_>) {}
        fn handle_call(&mut self, _request: Message, reply: ReplyTo, _ctx: &mut Ctx<'_>) {
            reply.reply_with(self.0);
        }
    }
    impl Drop for Version {
        fn drop(&mut self) {
            let _ = self.1.send(self.0);
        }
    }
    let (dropped_tx, dropped) = mpsc::channel();
    let pid = node.spawn(Version(1, dropped_tx.clone())).unwrap();
    assert_eq!(call::<u32>(&node, pid, Ping), 1);
    assert_eq!(node.with_suspended(pid, |_| ()).unwrap_err(), SuspendError::NotSuspended(pid));
    node.suspend(pid, WAIT).unwrap();
    // A call made while suspended waits for the resume, then sees version 2.
    let (done_tx, done) = mpsc::channel();
    let caller = {
        let node = node.clone();
        thread::spawn(move || {
            let _ = done_tx.send(node.call(pid, Ping, WAIT).map(|m| m.downcast::<u32>().ok()));
        })
    };
    assert!(wait_until(WAIT, || node.message_queue_len(pid) == Some(1)));
    let old = node
        .with_suspended(pid, |actor| std::mem::replace(actor, Box::new(Version(2, dropped_tx.clone()))))
        .unwrap();
    drop(old);
    assert_eq!(dropped.recv_timeout(WAIT).unwrap(), 1, "the old actor was dropped");
    node.resume(pid).unwrap();
    assert_eq!(done.recv_timeout(WAIT).unwrap(), Ok(Some(2)));
    caller.join().unwrap();
    node.shutdown();
}

/// `with_suspended` lends the actor out. If someone resumes the process and
/// sends it a message meanwhile, the message must still be handled once the
/// actor is back (no lost wake-up).
#[test]
fn a_resume_while_the_actor_is_lent_out_loses_no_wakeup() {
    let node = start();
    let (pid, rx) = puppet(&node);
    node.suspend(pid, WAIT).unwrap();
    let other = node.clone();
    node.with_suspended(pid, |_actor| {
        other.resume(pid).unwrap();
        other.send(pid, Marker(1)).unwrap();
        // Give a worker the time to try (and fail) to run the process.
        thread::sleep(Duration::from_millis(50));
    })
    .unwrap();
    assert_eq!(
        rx.recv_timeout(WAIT).ok().and_then(|m| m.downcast::<Marker>().ok()),
        Some(Marker(1)),
        "the message sent while the actor was lent out was never handled \
         (queue length {:?})",
        node.message_queue_len(pid)
    );
    node.shutdown();
}

#[test]
fn suspend_and_resume_errors() {
    let node = start();
    let pid = node.spawn_sync(Stopper, WAIT).unwrap();
    assert_eq!(node.resume(pid), Err(SuspendError::NotSuspended(pid)));
    node.suspend(pid, WAIT).unwrap();
    assert_eq!(node.suspend(pid, WAIT), Err(SuspendError::AlreadySuspended(pid)));
    node.resume(pid).unwrap();
    assert_eq!(node.resume(pid), Err(SuspendError::NotSuspended(pid)));
    let waiter = node.exit_waiter(pid);
    node.send(pid, ExitReason::Normal).unwrap();
    waiter.wait(WAIT).unwrap();
    assert_eq!(node.suspend(pid, WAIT), Err(SuspendError::NoProc(pid)));
    assert_eq!(node.with_suspended(pid, |_| ()).unwrap_err(), SuspendError::NoProc(pid));
    node.shutdown();
}

#[test]
fn suspend_times_out_on_a_blocked_handler_and_leaves_the_process_running() {
    let node = start();
    let (actor, gate) = gate();
    let pid = node.spawn(actor).unwrap();
    node.send(pid, Block(None)).unwrap();
    gate.entered.recv_timeout(WAIT).unwrap();
    let timeout = Duration::from_millis(50);
    let started = Instant::now();
    assert_eq!(node.suspend(pid, timeout), Err(SuspendError::Timeout(pid, timeout)));
    assert!(started.elapsed() >= timeout);
    // Not suspended: a message sent now is handled once the handler returns.
    node.send(pid, 7u32).unwrap();
    assert_eq!(node.with_suspended(pid, |_| ()).unwrap_err(), SuspendError::NotSuspended(pid));
    gate.release.send(()).unwrap();
    assert_eq!(gate.handled.recv_timeout(WAIT).unwrap(), 7);
    node.suspend(pid, WAIT).unwrap();
    node.resume(pid).unwrap();
    node.shutdown();
}

// ---------------------------------------------------------------------------
// scheduling: budget fairness and the watchdog

#[test]
fn a_flooded_process_does_not_starve_a_call_to_another() {
    let node = Node::start(NodeConfig { workers: 1, watchdog: None, ..NodeConfig::default() });
    const FLOOD: u64 = 100_000;
    struct Busy(u64);
    impl Actor for Busy {
        fn handle(&mut self, _message: Message, _ctx: &mut Ctx<'_>) {
            let started = Instant::now();
            while started.elapsed() < Duration::from_micros(4) {
                std::hint::spin_loop();
            }
            self.0 += 1;
        }
        fn handle_call(&mut self, _request: Message, reply: ReplyTo, _ctx: &mut Ctx<'_>) {
            reply.reply_with(self.0);
        }
    }
    let busy = node.spawn_sync(Busy(0), WAIT).unwrap();
    let other = node.spawn_sync(Doubler, WAIT).unwrap();
    let flood_started = Instant::now();
    for n in 0..FLOOD {
        node.send(busy, n).unwrap();
    }
    let call_started = Instant::now();
    assert_eq!(call::<u32>(&node, other, 5u32), 10);
    let call_took = call_started.elapsed();
    let left = node.message_queue_len(busy).unwrap();
    // Wait for the flood to drain (the call queues behind it).
    let handled = node.call(busy, Ping, Duration::from_secs(10)).unwrap().downcast::<u64>().unwrap();
    let flood_took = flood_started.elapsed();
    assert_eq!(handled, FLOOD);
    assert!(left > (FLOOD / 4) as usize, "the call was answered only after most of the flood ({left} left)");
    assert!(call_took * 5 < flood_took, "call took {call_took:?} while the flood took {flood_took:?}");
    node.shutdown();
}

#[test]
fn the_watchdog_replaces_a_worker_blocked_in_a_handler() {
    let node = Node::start(NodeConfig {
        workers: 1,
        watchdog: Some(Duration::from_millis(50)),
        ..NodeConfig::default()
    });
    let other = node.spawn_sync(Doubler, WAIT).unwrap();
    assert_eq!(node.worker_replacements(), 0);
    let (actor, gate) = gate();
    let blocker = node.spawn(actor).unwrap();
    node.send(blocker, Block(None)).unwrap();
    gate.entered.recv_timeout(WAIT).unwrap();
    // The only worker is stuck; the call must still be answered.
    let started = Instant::now();
    let reply = node.call(other, 21u32, Duration::from_millis(500));
    let took = started.elapsed();
    assert_eq!(reply.map(|m| m.downcast::<u32>().ok()), Ok(Some(42)), "after {took:?}");
    assert!(node.worker_replacements() >= 1);
    // Processes spawned while the old worker is stuck run too.
    let fresh = node.spawn_sync(Doubler, Duration::from_millis(500)).unwrap();
    assert_eq!(call::<u32>(&node, fresh, 1u32), 2);
    gate.release.send(()).unwrap();
    // The blocked process carries on after its handler returns.
    node.send(blocker, 3u32).unwrap();
    assert_eq!(gate.handled.recv_timeout(WAIT).unwrap(), 3);
    assert_eq!(call::<u32>(&node, other, 2u32), 4);
    node.shutdown();
}
