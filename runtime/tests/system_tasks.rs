//! System tasks (runtime work run inside a process's own turn, in mailbox
//! order), mailbox accounting, the code server's undo primitives (`open`,
//! `unload`, `undelete`) and per-version stats, end to end: native
//! processes, and module processes built from examples/ that are moved
//! between versions by system tasks (`migrated_state` + `switch`).
//!
//! Every wait that should succeed has a generous timeout; nothing asserts
//! an exact timing, only lower bounds that sleeps guarantee.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use relive_runtime::system::{SystemTask, TaskError, TaskGuard};
use relive_runtime::{
    Actor, CodeError, CodeServer, Ctx, ExitReason, LoadError, MailboxCounts, Message, ModuleCode, Node, Pid,
    ReplyTo, STATS_BATCH, SendError, SpawnError, VersionStatsSnapshot,
};
use serde_json::{Value, json};
use support::{node_with_code, payload};

/// For whatever should happen: generous, on a loaded machine.
const T: Duration = Duration::from_secs(5);
/// For whatever should not happen: a timeout we expect to run out.
const SHORT: Duration = Duration::from_millis(50);

fn version(text: &str) -> semver::Version {
    semver::Version::parse(text).unwrap()
}

// ---------------------------------------------------------------------------
// Helpers: a gate that holds a handler (or a task) busy, and a native
// process that records what it handles.

/// The test's side of a gate: learns that the holder is inside, lets it go.
struct Gate {
    entered: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
}

/// The holder's side: `hold` blocks until the gate is released (or dropped,
/// so a failing test never leaves a worker blocked for long).
struct Hold {
    entered: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
}

fn gate() -> (Gate, Hold) {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    (Gate { entered: entered_rx, release: release_tx }, Hold { entered: entered_tx, release: release_rx })
}

impl Gate {
    fn wait_entered(&self) {
        self.entered.recv_timeout(T).expect("the holder reached the gate");
    }

    fn release(&self) {
        let _ = self.release.send(());
    }

    /// A handle to release the gate from another thread.
    fn releaser(&self) -> mpsc::Sender<()> {
        self.release.clone()
    }
}

impl Hold {
    fn hold(self) {
        let _ = self.entered.send(());
        let _ = self.release.recv_timeout(Duration::from_secs(20));
    }
}

/// What the recorder has seen, in order.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, entry: impl Into<String>) {
        self.0.lock().unwrap().push(entry.into());
    }

    fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// Messages to a [`Recorder`].
enum Cmd {
    /// Recorded as is.
    Note(&'static str),
    /// Recorded as "block", then holds the process busy until released.
    Block(Hold),
    /// Stops the process.
    Stop(ExitReason),
}

/// A native process recording every message and call into a [`Log`]; a
/// call answers how many entries the log has (after recording "call").
struct Recorder {
    log: Log,
}

impl Actor for Recorder {
    fn handle(&mut self, message: Message, ctx: &mut Ctx<'_>) {
        match message.downcast::<Cmd>() {
            Ok(Cmd::Note(text)) => self.log.push(text),
            Ok(Cmd::Block(hold)) => {
                self.log.push("block");
                hold.hold();
            }
            Ok(Cmd::Stop(reason)) => {
                self.log.push("stop");
                ctx.stop(reason);
            }
            Err(_) => self.log.push("unknown"),
        }
    }

    fn handle_call(&mut self, _request: Message, reply: ReplyTo, _ctx: &mut Ctx<'_>) {
        self.log.push("call");
        reply.reply_with(self.log.entries().len() as u64);
    }
}

fn spawn_recorder(node: &Node) -> (Pid, Log) {
    let log = Log::default();
    let pid = node.spawn_sync(Recorder { log: log.clone() }, T).expect("spawning a recorder");
    (pid, log)
}

/// A synchronous round trip: everything queued before it has been handled.
fn answers(node: &Node, pid: Pid) -> bool {
    node.call(pid, (), T).is_ok()
}

/// Blocks `pid` in a handler; returns once the handler is running, so
/// everything sent from now on queues behind it.
fn make_busy(node: &Node, pid: Pid) -> Gate {
    let (gate, hold) = gate();
    node.send(pid, Cmd::Block(hold)).expect("the process is alive");
    gate.wait_entered();
    gate
}

fn counts(node: &Node, pid: Pid) -> MailboxCounts {
    node.mailbox_counts(pid).expect("the process is alive")
}

/// Queues a task that only records that it ran.
fn flag_task(node: &Node, pid: Pid) -> (SystemTask<()>, Arc<AtomicBool>) {
    let ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    let task =
        node.system_task(pid, move |_: &mut dyn Actor, _: &TaskGuard| flag.store(true, Ordering::SeqCst));
    (task.expect("the process is alive"), ran)
}

// ---------------------------------------------------------------------------
// Helpers for module processes.

fn code_server(node: &Node) -> Arc<CodeServer> {
    node.code_server().expect("the node has a code server")
}

fn load(code: &CodeServer, name: &str) -> Arc<ModuleCode> {
    let loaded = code.load(&support::library(name)).unwrap_or_else(|e| panic!("loading {name}: {e}"));
    let current = code.current(&loaded.name).expect("a loaded module is current");
    assert_eq!(current.version(), &loaded.version);
    current
}

fn spawn_counter(node: &Node, init: Value) -> Pid {
    node.spawn_module("counter", payload(init), T).expect("spawning a counter")
}

fn call(node: &Node, pid: Pid, request: Value) -> Value {
    node.call_json(pid, &request, T).unwrap_or_else(|e| panic!("calling {pid} with {request}: {e}"))
}

fn version_of(node: &Node, pid: Pid) -> String {
    call(node, pid, json!("Version")).as_str().expect("Version answers a string").to_string()
}

fn get(node: &Node, pid: Pid) -> u64 {
    call(node, pid, json!("Get")).as_u64().expect("Get answers a number")
}

/// Stops a counter with `reason` (a cast) and waits until it is gone.
fn stop_counter(node: &Node, pid: Pid, reason: &str) -> ExitReason {
    let waiter = node.exit_waiter(pid);
    node.cast_json(pid, &json!({ "Stop": reason })).expect("the counter is alive");
    waiter.wait(T).expect("the counter stopped")
}

/// "counter" in `which_modules`: (current version, processes), (old
/// version, processes); None if the module is not loaded at all.
type Summary = Option<(Option<(String, usize)>, Option<(String, usize)>)>;

fn counter_versions(code: &CodeServer) -> Summary {
    let modules = code.which_modules();
    let counter = modules.iter().find(|m| m.name == "counter")?;
    let summary =
        |v: &Option<relive_runtime::VersionInfo>| v.as_ref().map(|v| (v.version.to_string(), v.processes));
    Some((summary(&counter.current), summary(&counter.old)))
}

fn versions(current: Option<(&str, usize)>, old: Option<(&str, usize)>) -> Summary {
    let own = |v: Option<(&str, usize)>| v.map(|(v, n)| (v.to_string(), n));
    Some((own(current), own(old)))
}

/// Moves module process `pid` to `to` inside a system task: the state is
/// built while the process runs nothing else, and switched only if the
/// waiter still wants it. True if it switched.
fn migrate_in_task(node: &Node, pid: Pid, to: &Arc<ModuleCode>, extra: Value) -> Result<bool, String> {
    let to = Arc::clone(to);
    let extra = payload(extra).0;
    let task = node
        .system_task(pid, move |actor: &mut dyn Actor, guard: &TaskGuard| {
            let process = actor.as_module_process().ok_or("not a module process")?;
            let state = process.migrated_state(&to, &extra).map_err(|e| e.to_string())?;
            if !guard.commit() {
                return Ok(false);
            }
            drop(process.switch(state));
            Ok(true)
        })
        .expect("the process is alive");
    task.wait(T, T).expect("the migration task ran").value
}

/// What a module process's actor says of itself, read in a system task:
/// (version it runs, callbacks it handled).
fn module_view(node: &Node, pid: Pid) -> Option<(String, u64)> {
    node.system_task(pid, |actor: &mut dyn Actor, _: &TaskGuard| {
        actor.as_module_process().map(|p| (p.code().version().to_string(), p.handled()))
    })
    .expect("the process is alive")
    .wait(T, T)
    .expect("the task ran")
    .value
}

// ---------------------------------------------------------------------------
// 1. System tasks

#[test]
fn a_task_runs_in_mailbox_order_between_messages() {
    let node = Node::start(Default::default());
    let (pid, log) = spawn_recorder(&node);
    let gate = make_busy(&node, pid);
    node.send(pid, Cmd::Note("before-1")).unwrap();
    node.send(pid, Cmd::Note("before-2")).unwrap();
    let task_log = log.clone();
    let task = node
        .system_task(pid, move |_: &mut dyn Actor, _: &TaskGuard| {
            task_log.push("task");
            "done"
        })
        .unwrap();
    node.send(pid, Cmd::Note("after-1")).unwrap();
    node.send(pid, Cmd::Note("after-2")).unwrap();
    // Everything is queued behind the busy handler; hold it a while so the
    // task certainly waits.
    thread::sleep(Duration::from_millis(30));
    gate.release();
    let done = task.wait(T, T).expect("the task ran");
    assert_eq!(done.value, "done");
    assert!(done.waited >= Duration::from_millis(30), "it waited behind the busy handler: {:?}", done.waited);
    assert!(answers(&node, pid));
    assert_eq!(log.entries(), ["block", "before-1", "before-2", "task", "after-1", "after-2", "call"]);
    node.shutdown();
}

#[test]
fn a_running_task_pauses_only_its_process_and_its_mailbox_keeps_accepting() {
    let node = Node::start(Default::default());
    let (pid, log) = spawn_recorder(&node);
    let (other, _) = spawn_recorder(&node);
    let (gate, hold) = gate();
    let task_log = log.clone();
    let task = node
        .system_task(pid, move |_: &mut dyn Actor, _: &TaskGuard| {
            task_log.push("task");
            hold.hold();
            7u32
        })
        .unwrap();
    gate.wait_entered();
    // The process is inside its task: messages still queue, and other
    // processes run.
    node.send(pid, Cmd::Note("during")).unwrap();
    assert_eq!(counts(&node, pid).queued, 1);
    assert!(answers(&node, other));
    // It is not suspended (resume refuses), just busy.
    assert!(node.resume(pid).is_err());
    thread::sleep(Duration::from_millis(20));
    gate.release();
    let done = task.wait(T, T).expect("the task ran");
    assert_eq!(done.value, 7);
    assert!(done.ran_for >= Duration::from_millis(20), "ran_for counts the task's run: {:?}", done.ran_for);
    assert!(answers(&node, pid));
    assert_eq!(log.entries(), ["task", "during", "call"]);
    node.shutdown();
}

#[test]
fn a_task_gets_the_processs_own_actor() {
    let (node, _dir) = node_with_code();
    let code = code_server(&node);
    load(&code, "counter-v1");
    let counter = spawn_counter(&node, json!({ "count": 1 }));
    call(&node, counter, json!({ "Add": 2 }));
    call(&node, counter, json!("Get"));
    node.cast_json(counter, &json!({ "Add": 4 })).unwrap();
    // The task is queued after the cast, so it sees all three callbacks.
    assert_eq!(module_view(&node, counter), Some(("1.0.0".to_string(), 3)));
    assert_eq!(get(&node, counter), 7);
    assert_eq!(module_view(&node, counter), Some(("1.0.0".to_string(), 4)));

    // A native process's actor is no module process.
    let (native, _) = spawn_recorder(&node);
    assert_eq!(module_view(&node, native), None);
    node.shutdown();
}

#[test]
fn a_busy_process_gives_not_started_and_the_task_never_runs() {
    let node = Node::start(Default::default());
    let (pid, log) = spawn_recorder(&node);
    let gate = make_busy(&node, pid);
    let (task, ran) = flag_task(&node, pid);
    let started = Instant::now();
    assert_eq!(task.wait(SHORT, T).unwrap_err(), TaskError::NotStarted(SHORT));
    assert!(started.elapsed() < T, "NotStarted comes at the start timeout, not the run timeout");
    gate.release();
    // The call is queued after the abandoned task: once it is answered, the
    // process has gone past the task.
    assert!(answers(&node, pid));
    assert!(!ran.load(Ordering::SeqCst), "a task whose waiter gave up must never run");
    assert_eq!(log.entries(), ["block", "call"]);
    node.shutdown();
}

#[test]
fn a_suspended_process_gives_not_started_and_the_task_never_runs() {
    let node = Node::start(Default::default());
    let (pid, _log) = spawn_recorder(&node);
    node.suspend(pid, T).unwrap();
    let (task, ran) = flag_task(&node, pid);
    assert_eq!(task.wait(SHORT, T).unwrap_err(), TaskError::NotStarted(SHORT));
    node.resume(pid).unwrap();
    assert!(answers(&node, pid));
    assert!(!ran.load(Ordering::SeqCst), "a task whose waiter gave up must never run");
    node.shutdown();
}

#[test]
fn an_overrun_task_is_abandoned_and_cannot_commit() {
    let node = Node::start(Default::default());
    let (pid, _log) = spawn_recorder(&node);
    let (gate, hold) = gate();
    let (committed_tx, committed_rx) = mpsc::channel();
    let task = node
        .system_task(pid, move |_: &mut dyn Actor, guard: &TaskGuard| {
            hold.hold();
            let _ = committed_tx.send(guard.commit());
            1u8
        })
        .unwrap();
    gate.wait_entered();
    assert_eq!(task.wait(T, SHORT).unwrap_err(), TaskError::Overran(SHORT));
    gate.release();
    let committed = committed_rx.recv_timeout(T).expect("the task went on after its waiter gave up");
    assert!(!committed, "commit after an overrun must say the result is no longer wanted");
    assert!(answers(&node, pid), "the process lives on after an overrun task");
    node.shutdown();
}

#[test]
fn a_committed_task_is_waited_for_past_its_run_timeout() {
    let node = Node::start(Default::default());
    let (pid, _log) = spawn_recorder(&node);
    let (gate, hold) = gate();
    let task = node
        .system_task(pid, move |_: &mut dyn Actor, guard: &TaskGuard| {
            let committed = guard.commit();
            hold.hold();
            committed
        })
        .unwrap();
    // The task has committed and is now held.
    gate.wait_entered();
    let releaser = gate.releaser();
    let release = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        let _ = releaser.send(());
    });
    let done = task.wait(T, Duration::from_millis(1)).expect("a committed task's result is always taken");
    assert!(done.value, "commit succeeded while the waiter still waited");
    release.join().unwrap();
    assert!(answers(&node, pid));
    node.shutdown();
}

#[test]
fn a_task_panic_is_caught_and_the_process_lives_on() {
    let node = Node::start(Default::default());
    let (pid, log) = spawn_recorder(&node);
    let task =
        node.system_task(pid, |_: &mut dyn Actor, _: &TaskGuard| -> u8 { panic!("the task exploded") });
    match task.unwrap().wait(T, T) {
        Err(TaskError::Panicked(text)) => assert!(text.contains("the task exploded"), "{text}"),
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert!(node.is_alive(pid));
    assert!(answers(&node, pid));
    // And it still runs tasks.
    let (task, ran) = flag_task(&node, pid);
    task.wait(T, T).expect("a later task runs");
    assert!(ran.load(Ordering::SeqCst));
    assert_eq!(log.entries(), ["call"]);
    node.shutdown();
}

#[test]
fn a_task_panic_leaves_a_module_process_and_its_version_untouched() {
    let (node, _dir) = node_with_code();
    let code = code_server(&node);
    let v1 = load(&code, "counter-v1");
    let counter = spawn_counter(&node, json!({ "count": 5 }));
    let before = v1.stats();
    let task = node.system_task(counter, |actor: &mut dyn Actor, _: &TaskGuard| {
        assert!(actor.as_module_process().is_some());
        panic!("the task exploded");
    });
    assert!(matches!(task.unwrap().wait(T, T), Err(TaskError::Panicked(_))));
    assert_eq!(get(&node, counter), 5);
    assert_eq!(version_of(&node, counter), "1.0.0");
    assert_eq!(v1.stats().since(&before).crashes, 0, "a task's panic is not a crash of the module");
    node.shutdown();
}

#[test]
fn a_process_killed_with_a_task_queued_reports_exited() {
    let node = Node::start(Default::default());
    // Killed while suspended (the kill still reaches it).
    let (pid, _log) = spawn_recorder(&node);
    node.suspend(pid, T).unwrap();
    let (task, ran) = flag_task(&node, pid);
    node.exit(pid, ExitReason::Kill);
    assert_eq!(task.wait(T, T).unwrap_err(), TaskError::Exited);
    assert!(!ran.load(Ordering::SeqCst));
    assert!(!node.is_alive(pid));

    // Killed while busy in a handler: it exits once the handler returns.
    let (pid, _log) = spawn_recorder(&node);
    let gate = make_busy(&node, pid);
    let (task, ran) = flag_task(&node, pid);
    node.exit(pid, ExitReason::Kill);
    gate.release();
    assert_eq!(task.wait(T, T).unwrap_err(), TaskError::Exited);
    assert!(!ran.load(Ordering::SeqCst));
    node.shutdown();
}

#[test]
fn a_process_that_stops_before_reaching_a_task_reports_exited() {
    let node = Node::start(Default::default());
    let (pid, log) = spawn_recorder(&node);
    let gate = make_busy(&node, pid);
    node.send(pid, Cmd::Stop(ExitReason::Normal)).unwrap();
    let (task, ran) = flag_task(&node, pid);
    let waiter = node.exit_waiter(pid);
    gate.release();
    assert_eq!(task.wait(T, T).unwrap_err(), TaskError::Exited);
    assert_eq!(waiter.wait(T), Some(ExitReason::Normal));
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(log.entries(), ["block", "stop"]);
    // A task for a dead process is refused at once.
    match node.system_task(pid, |_: &mut dyn Actor, _: &TaskGuard| ()) {
        Err(error) => assert_eq!(error, SendError::NoProc(pid)),
        Ok(_) => panic!("a task was queued for a dead process"),
    }
    node.shutdown();
}

#[test]
fn mailbox_counts_count_messages_and_system_tasks_apart() {
    let node = Node::start(Default::default());
    let (pid, _log) = spawn_recorder(&node);
    assert!(answers(&node, pid));
    let c0 = counts(&node, pid);
    assert_eq!(c0.queued, 0);

    let gate = make_busy(&node, pid); // 1 message, taken
    for note in ["a", "b", "c"] {
        node.send(pid, Cmd::Note(note)).unwrap();
    }
    let (task1, _) = flag_task(&node, pid);
    let (task2, _) = flag_task(&node, pid);
    let c1 = counts(&node, pid);
    assert_eq!(c1.received - c0.received, 4, "the block and three notes: {c1:?}");
    assert_eq!(c1.system - c0.system, 2, "two system tasks, not counted as received: {c1:?}");
    assert_eq!(c1.taken - c0.taken, 1, "only the block is out of the queue: {c1:?}");
    assert_eq!(c1.queued, 5, "three notes and two tasks wait: {c1:?}");
    assert_eq!(c1.missing_since(&c0), 0);

    gate.release();
    task1.wait(T, T).unwrap();
    task2.wait(T, T).unwrap();
    assert!(answers(&node, pid));
    let c2 = counts(&node, pid);
    assert_eq!(c2.queued, 0);
    assert_eq!(c2.received - c0.received, 5, "plus the call: {c2:?}");
    assert_eq!(c2.system - c0.system, 2, "{c2:?}");
    assert_eq!(c2.taken - c0.taken, 7, "everything was handled: {c2:?}");
    assert_eq!(c2.missing_since(&c0), 0);
    assert_eq!(c2.missing_since(&c1), 0);

    let waiter = node.exit_waiter(pid);
    node.exit(pid, ExitReason::Kill);
    waiter.wait(T).unwrap();
    assert_eq!(node.mailbox_counts(pid), None);
    node.shutdown();
}

// ---------------------------------------------------------------------------
// 2. open, unload, undelete

#[test]
fn open_checks_a_library_without_installing_it() {
    let (node, _dir) = node_with_code();
    let code = code_server(&node);
    load(&code, "counter-v1");
    let before = code.which_modules();

    let v2 = code.open(&support::library("counter-v2")).expect("opening counter 2.0.0");
    assert_eq!((v2.name(), v2.version()), ("counter", &version("2.0.0")));
    assert_eq!(v2.process_count(), 0);
    assert_eq!(code.which_modules(), before, "open changes nothing the node runs");
    assert_eq!(code.current("counter").unwrap().version(), &version("1.0.0"));
    assert!(code.old("counter").is_none());
    let counter = spawn_counter(&node, json!({}));
    assert_eq!(version_of(&node, counter), "1.0.0", "new processes still start on the current version");

    // Every check of load runs on the file.
    match code.open(&support::library("bad-magic")) {
        Err(CodeError::Load(LoadError::BadMagic { .. })) => {}
        other => panic!("expected a BadMagic load error, got {:?}", other.map(|c| c.version().clone())),
    }
    let clash = support::library("counter-v1-clash");
    match code.open(&clash) {
        Err(CodeError::LayoutChanged { module, version: v, .. }) => {
            assert_eq!((module.as_str(), v), ("counter", version("1.0.0")));
        }
        other => panic!("expected LayoutChanged, got {:?}", other.map(|c| c.version().clone())),
    }
    assert_eq!(code.which_modules().len(), before.len());

    // The opened library can still be loaded for real afterwards.
    let loaded = code.load(&support::library("counter-v2")).unwrap();
    assert_eq!(loaded.previous, Some(version("1.0.0")));
    assert_eq!(counter_versions(&code), versions(Some(("2.0.0", 0)), Some(("1.0.0", 1))));
    node.shutdown();
}

#[test]
fn a_dry_run_migration_against_opened_code_changes_nothing() {
    let (node, _dir) = node_with_code();
    let code = code_server(&node);
    let v1 = load(&code, "counter-v1");
    let counter = spawn_counter(&node, json!({ "count": 5 }));
    let v2 = code.open(&support::library("counter-v2")).unwrap();
    let extra = payload(json!({ "default_label": "dry" })).0;
    let probe = Arc::clone(&v2);
    let task = node.system_task(counter, move |actor: &mut dyn Actor, _: &TaskGuard| {
        let process = actor.as_module_process().expect("a module process");
        // The new state is built and dropped (freed by v2's code).
        process.migrated_state(&probe, &extra).map(drop).map_err(|e| e.to_string())
    });
    task.unwrap().wait(T, T).expect("the task ran").value.expect("v2's code_change accepts v1's state");
    assert_eq!(version_of(&node, counter), "1.0.0");
    assert_eq!(get(&node, counter), 5);
    assert_eq!(call(&node, counter, json!("State")), json!({ "count": 5, "label": "" }));
    assert_eq!(v1.process_count(), 1);
    assert_eq!(v2.process_count(), 0);
    assert_eq!(counter_versions(&code), versions(Some(("1.0.0", 1)), None));
    node.shutdown();
}

#[test]
fn upgrade_and_rollback_by_system_tasks_then_unload_the_new_version() {
    let (node, _dir) = node_with_code();
    let code = code_server(&node);
    let v1 = load(&code, "counter-v1");
    let counter = spawn_counter(&node, json!({ "count": 5 }));
    let v2 = load(&code, "counter-v2");
    assert_eq!(counter_versions(&code), versions(Some(("2.0.0", 0)), Some(("1.0.0", 1))));

    // Upgrade: v1's state goes through v2's code_change, the process keeps
    // its pid and mailbox.
    assert_eq!(migrate_in_task(&node, counter, &v2, json!({ "default_label": "moved" })), Ok(true));
    assert_eq!(version_of(&node, counter), "2.0.0");
    assert_eq!(call(&node, counter, json!("State")), json!({ "total": 5, "label": "moved", "adds": 0 }));
    assert_eq!(call(&node, counter, json!({ "Add": 2 })), json!(7));
    assert_eq!(counter_versions(&code), versions(Some(("2.0.0", 1)), Some(("1.0.0", 0))));

    // v2 cannot be unloaded while the counter runs it; v1 is not current.
    match code.unload("counter", &version("2.0.0")) {
        Err(CodeError::StillRunning { module, version: v, processes }) => {
            assert_eq!((module.as_str(), v, processes), ("counter", version("2.0.0"), 1));
        }
        other => panic!("expected StillRunning, got {other:?}"),
    }
    assert!(matches!(code.unload("counter", &version("1.0.0")), Err(CodeError::UnknownModule(_))));
    assert!(matches!(code.unload("no-such-module", &version("1.0.0")), Err(CodeError::UnknownModule(_))));
    assert_eq!(counter_versions(&code), versions(Some(("2.0.0", 1)), Some(("1.0.0", 0))));

    // Roll back: v2 downgrades its state to v1's format.
    assert_eq!(migrate_in_task(&node, counter, &v1, Value::Null), Ok(true));
    assert_eq!(version_of(&node, counter), "1.0.0");
    assert_eq!(call(&node, counter, json!("State")), json!({ "count": 7, "label": "moved" }));
    assert_eq!(counter_versions(&code), versions(Some(("2.0.0", 0)), Some(("1.0.0", 1))));

    // Now v2 goes, and v1 is current again.
    code.unload("counter", &version("2.0.0")).expect("nobody runs 2.0.0 any more");
    assert_eq!(counter_versions(&code), versions(Some(("1.0.0", 1)), None));
    assert!(Arc::ptr_eq(&code.current("counter").unwrap(), &v1));
    let fresh = spawn_counter(&node, json!({}));
    assert_eq!(version_of(&node, fresh), "1.0.0");
    assert_eq!(get(&node, counter), 7);
    node.shutdown();
}

#[test]
fn a_migration_abandoned_before_commit_changes_nothing() {
    let (node, _dir) = node_with_code();
    let code = code_server(&node);
    load(&code, "counter-v1");
    let counter = spawn_counter(&node, json!({ "count": 3 }));
    let v2 = load(&code, "counter-v2");
    let (gate, hold) = gate();
    let (switched_tx, switched_rx) = mpsc::channel();
    let to = Arc::clone(&v2);
    let task = node
        .system_task(counter, move |actor: &mut dyn Actor, guard: &TaskGuard| {
            let process = actor.as_module_process().expect("a module process");
            let state = process.migrated_state(&to, &[]).expect("code_change accepts the state");
            hold.hold();
            let switched = guard.commit();
            if switched {
                drop(process.switch(state));
            }
            let _ = switched_tx.send(switched);
        })
        .unwrap();
    gate.wait_entered();
    assert_eq!(task.wait(T, SHORT).unwrap_err(), TaskError::Overran(SHORT));
    gate.release();
    assert_eq!(switched_rx.recv_timeout(T), Ok(false));
    assert_eq!(version_of(&node, counter), "1.0.0");
    assert_eq!(get(&node, counter), 3);
    assert_eq!(counter_versions(&code), versions(Some(("2.0.0", 0)), Some(("1.0.0", 1))));
    node.shutdown();
}

#[test]
fn unload_of_the_only_version_removes_the_module_once_nobody_runs_it() {
    let (node, _dir) = node_with_code();
    let code = code_server(&node);
    load(&code, "counter-v1");
    let counter = spawn_counter(&node, json!({}));
    assert!(matches!(
        code.unload("counter", &version("1.0.0")),
        Err(CodeError::StillRunning { processes: 1, .. })
    ));
    assert_eq!(counter_versions(&code), versions(Some(("1.0.0", 1)), None));
    assert_eq!(stop_counter(&node, counter, "normal"), ExitReason::Normal);

    code.unload("counter", &version("1.0.0")).expect("nobody runs it");
    assert_eq!(counter_versions(&code), None);
    assert!(code.current("counter").is_none());
    assert!(matches!(node.spawn_module("counter", payload(json!({})), T), Err(SpawnError::UnknownModule(_))));
    assert!(matches!(code.unload("counter", &version("1.0.0")), Err(CodeError::UnknownModule(_))));

    // Loading it again works as a first load.
    let loaded = code.load(&support::library("counter-v1")).unwrap();
    assert_eq!((loaded.previous, loaded.changed), (None, true));
    assert_eq!(version_of(&node, spawn_counter(&node, json!({}))), "1.0.0");
    node.shutdown();
}

#[test]
fn undelete_makes_the_deleted_version_current_again() {
    let (node, _dir) = node_with_code();
    let code = code_server(&node);
    let v1 = load(&code, "counter-v1");
    let running = spawn_counter(&node, json!({ "count": 2 }));
    assert!(matches!(code.undelete("counter"), Err(CodeError::UnknownModule(_))), "nothing was deleted");

    code.delete("counter").unwrap();
    assert_eq!(counter_versions(&code), versions(None, Some(("1.0.0", 1))));
    assert!(matches!(node.spawn_module("counter", payload(json!({})), T), Err(SpawnError::UnknownModule(_))));

    code.undelete("counter").expect("undoing the delete");
    assert_eq!(counter_versions(&code), versions(Some(("1.0.0", 1)), None));
    assert!(Arc::ptr_eq(&code.current("counter").unwrap(), &v1));
    assert_eq!(get(&node, running), 2, "the running process never noticed");
    let fresh = spawn_counter(&node, json!({}));
    assert_eq!(version_of(&node, fresh), "1.0.0");
    assert_eq!(counter_versions(&code), versions(Some(("1.0.0", 2)), None));
    assert!(matches!(code.undelete("counter"), Err(CodeError::UnknownModule(_))), "it is current");
    assert!(matches!(code.undelete("no-such-module"), Err(CodeError::UnknownModule(_))));

    // With two versions loaded, delete drops the unused old one; undelete
    // brings back the one delete made old.
    for pid in [running, fresh] {
        stop_counter(&node, pid, "normal");
    }
    load(&code, "counter-v2");
    assert_eq!(counter_versions(&code), versions(Some(("2.0.0", 0)), Some(("1.0.0", 0))));
    assert!(
        matches!(code.undelete("counter"), Err(CodeError::UnknownModule(_))),
        "a current version is never replaced by the old one"
    );
    assert_eq!(counter_versions(&code), versions(Some(("2.0.0", 0)), Some(("1.0.0", 0))));
    code.delete("counter").unwrap();
    assert_eq!(counter_versions(&code), versions(None, Some(("2.0.0", 0))));
    code.undelete("counter").unwrap();
    assert_eq!(counter_versions(&code), versions(Some(("2.0.0", 0)), None));
    assert_eq!(version_of(&node, spawn_counter(&node, json!({}))), "2.0.0");
    node.shutdown();
}

// ---------------------------------------------------------------------------
// 3. Version stats

#[test]
fn stats_since_subtracts_and_saturates() {
    let earlier = VersionStatsSnapshot {
        crashes: 1,
        handled: 10,
        samples: 2,
        sampled_ns: 500,
        replies: 7,
        error_replies: 1,
        undecodable: 0,
    };
    let later = VersionStatsSnapshot {
        crashes: 3,
        handled: 25,
        samples: 3,
        sampled_ns: 800,
        replies: 17,
        error_replies: 4,
        undecodable: 2,
    };
    assert_eq!(
        later.since(&earlier),
        VersionStatsSnapshot {
            crashes: 2,
            handled: 15,
            samples: 1,
            sampled_ns: 300,
            replies: 10,
            error_replies: 3,
            undecodable: 2
        }
    );
    assert_eq!(earlier.since(&later), VersionStatsSnapshot::default());
    assert_eq!(later.since(&earlier).mean_handler_time(), Some(Duration::from_nanos(300)));
    assert_eq!(VersionStatsSnapshot::default().mean_handler_time(), None);
}

#[test]
fn stats_count_handled_messages_in_batches_and_at_exit() {
    let (node, _dir) = node_with_code();
    let code = code_server(&node);
    let v1 = load(&code, "counter-v1");
    let start = v1.stats();
    let counter = spawn_counter(&node, json!({}));
    for _ in 0..STATS_BATCH {
        call(&node, counter, json!({ "Add": 1 }));
    }
    // A full batch is flushed by the callback that completes it, before the
    // reply.
    let batch = v1.stats().since(&start);
    assert_eq!(batch.handled, STATS_BATCH, "{batch:?}");
    assert!(
        batch.samples >= 1 && batch.mean_handler_time().is_some(),
        "one callback in a batch is timed: {batch:?}"
    );
    assert_eq!(batch.crashes, 0);

    // A partial batch is flushed when the process ends.
    for _ in 0..3 {
        call(&node, counter, json!("Get"));
    }
    assert_eq!(module_view(&node, counter), Some(("1.0.0".to_string(), STATS_BATCH + 3)));
    // An error reply (a request the version cannot decode) is counted at
    // once, with every reply before it.
    assert!(node.call_json(counter, &json!("NoSuchRequest"), T).is_err());
    let replied = v1.stats().since(&start);
    assert_eq!((replied.replies, replied.error_replies), (STATS_BATCH + 4, 1), "{replied:?}");
    // A cast it cannot decode is lost, and counted at once.
    node.cast_json(counter, &json!({ "NoSuchCast": 1 })).unwrap();
    call(&node, counter, json!("Get"));
    assert_eq!(v1.stats().since(&start).undecodable, 1);
    assert_eq!(stop_counter(&node, counter, "normal"), ExitReason::Normal);
    let all = v1.stats().since(&start);
    assert_eq!(all.handled, STATS_BATCH + 7, "every callback, the stop included: {all:?}");
    assert_eq!((all.replies, all.error_replies), (STATS_BATCH + 5, 1), "{all:?}");
    assert_eq!(all.crashes, 0, "a normal stop is no crash");
    node.shutdown();
}

#[test]
fn stats_count_panics_abnormal_stops_and_init_failures() {
    let (node, _dir) = node_with_code();
    let code = code_server(&node);
    let v1 = load(&code, "counter-v1");
    let start = v1.stats();

    // A handler panic.
    let crasher = spawn_counter(&node, json!({}));
    let waiter = node.exit_waiter(crasher);
    assert!(node.call_json(crasher, &json!("Crash"), T).is_err());
    assert!(matches!(waiter.wait(T), Some(ExitReason::Panic(_))));
    assert_eq!(v1.stats().since(&start).crashes, 1);

    // An abnormal stop; clean stops are not crashes.
    let stopper = spawn_counter(&node, json!({}));
    assert!(matches!(stop_counter(&node, stopper, "it went wrong"), ExitReason::Error(_)));
    assert_eq!(v1.stats().since(&start).crashes, 2);
    let clean = spawn_counter(&node, json!({}));
    assert_eq!(stop_counter(&node, clean, "shutdown"), ExitReason::Shutdown);
    assert_eq!(v1.stats().since(&start).crashes, 2);

    // Init failing or panicking.
    for init in [json!({ "fail": true }), json!({ "panic": true })] {
        assert!(matches!(node.spawn_module("counter", payload(init), T), Err(SpawnError::InitFailed(..))));
    }
    let stats = v1.stats().since(&start);
    assert_eq!(stats.crashes, 4, "{stats:?}");
    // One callback each for the three processes that ran; failed inits ran
    // none. All have exited, so nothing is left unflushed.
    assert_eq!(stats.handled, 3, "{stats:?}");
    assert_eq!(v1.process_count(), 0);
    node.shutdown();
}

#[test]
fn stats_stay_with_the_version_that_handled_the_messages() {
    let (node, _dir) = node_with_code();
    let code = code_server(&node);
    let v1 = load(&code, "counter-v1");
    let counter = spawn_counter(&node, json!({}));
    let v2 = load(&code, "counter-v2");
    let (v1_start, v2_start) = (v1.stats(), v2.stats());
    for _ in 0..3 {
        call(&node, counter, json!({ "Add": 1 }));
    }
    assert_eq!(v1.stats().since(&v1_start).handled, 0, "less than a batch is not flushed yet");

    // The switch flushes what v1 handled to v1.
    assert_eq!(migrate_in_task(&node, counter, &v2, json!({ "default_label": "x" })), Ok(true));
    assert_eq!(v1.stats().since(&v1_start).handled, 3);
    assert_eq!(v2.stats().since(&v2_start).handled, 0);
    // The process's own count goes on across versions.
    assert_eq!(module_view(&node, counter), Some(("2.0.0".to_string(), 3)));

    // What it does on v2 counts for v2 only, a crash included.
    assert_eq!(get(&node, counter), 3);
    let waiter = node.exit_waiter(counter);
    assert!(node.call_json(counter, &json!("Crash"), T).is_err());
    assert!(matches!(waiter.wait(T), Some(ExitReason::Panic(_))));
    let (on_v1, on_v2) = (v1.stats().since(&v1_start), v2.stats().since(&v2_start));
    assert_eq!((on_v1.handled, on_v1.crashes), (3, 0), "{on_v1:?}");
    assert_eq!((on_v2.handled, on_v2.crashes), (2, 1), "{on_v2:?}");
    node.shutdown();
}

#[test]
fn a_task_group_runs_one_task_per_process_and_skips_the_dead_ones() {
    let node = Node::start(relive_runtime::NodeConfig::default());
    let (alive_a, _) = spawn_recorder(&node);
    let (dead, _) = spawn_recorder(&node);
    let (alive_b, _) = spawn_recorder(&node);
    let waiter = node.exit_waiter(dead);
    node.exit(dead, ExitReason::Kill);
    assert_eq!(waiter.wait(T), Some(ExitReason::Killed));

    let mut group = relive_runtime::system::TaskGroup::new();
    group.queue(&node, alive_a, |_, _| "a").unwrap();
    assert!(matches!(group.queue(&node, dead, |_, _| "dead"), Err(SendError::NoProc(p)) if p == dead));
    group.queue(&node, alive_b, |_, guard| if guard.commit() { "b" } else { "late" }).unwrap();
    assert_eq!(group.len(), 2, "a task for a dead process is not queued");
    let results = group.collect(T, T);
    let values: Vec<(Pid, &str)> = results.into_iter().map(|(pid, r)| (pid, r.expect("ran").value)).collect();
    assert_eq!(values, vec![(alive_a, "a"), (alive_b, "b")]);
    node.shutdown();
}
