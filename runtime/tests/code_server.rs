//! The module ABI and the code server, end to end with real libraries built
//! from examples/: two versions of a module at once, purge and soft_purge
//! with Erlang's semantics, the third-version rule, failed migrations that
//! leave a process untouched, bad libraries refused with an error naming the
//! file (and nothing loaded changing), contained module panics, supervised
//! module processes, and the JSON bridge.

mod support;

use std::cell::Cell;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relive_runtime::supervisor::{self, Strategy};
use relive_runtime::{
    Actor, CallError, CodeError, CodeServer, Ctx, ExitReason, JsonCallError, LoadError, Message,
    MigrateError, ModuleError, ModuleInfo, Node, Pid, ReplyTo, SpawnError, SupervisorSpec, SuspendError,
};
use serde_json::{Value, json};
use support::{node_with_code, payload};

const T: Duration = Duration::from_secs(2);

fn version(text: &str) -> semver::Version {
    semver::Version::parse(text).unwrap()
}

/// Spawns a counter (the current version) with this init argument.
fn spawn_counter(node: &Node, init: Value) -> Pid {
    node.spawn_module("counter", payload(init), T).expect("spawning a counter")
}

/// The version of the code a counter process runs, as it answers.
fn version_of(node: &Node, pid: Pid) -> String {
    let answer = node.call_json(pid, &json!("Version"), T).expect("the counter answers Version");
    answer.as_str().expect("Version answers a string").to_string()
}

fn get(node: &Node, pid: Pid) -> u64 {
    node.call_json(pid, &json!("Get"), T).expect("the counter answers Get").as_u64().expect("a number")
}

fn state(node: &Node, pid: Pid) -> Value {
    node.call_json(pid, &json!("State"), T).expect("the counter answers State")
}

/// `which_modules` for "counter": (current version, its processes) and
/// (old version, its processes).
type Summary = (Option<(String, usize)>, Option<(String, usize)>);

fn counter_versions(code: &CodeServer) -> Summary {
    let modules = code.which_modules();
    let counter = modules.iter().find(|m| m.name == "counter").expect("counter is loaded");
    let summary =
        |v: &Option<relive_runtime::VersionInfo>| v.as_ref().map(|v| (v.version.to_string(), v.processes));
    (summary(&counter.current), summary(&counter.old))
}

fn current_and_old(current: (&str, usize), old: Option<(&str, usize)>) -> Summary {
    (Some((current.0.to_string(), current.1)), old.map(|(v, n)| (v.to_string(), n)))
}

/// A native (non-module) process that answers every call with 42.
struct Native;

impl Actor for Native {
    fn handle(&mut self, _message: Message, _ctx: &mut Ctx<'_>) {}

    fn handle_call(&mut self, _request: Message, reply: ReplyTo, _ctx: &mut Ctx<'_>) {
        reply.reply_with(42u64)
    }
}

fn native_answers(node: &Node, pid: Pid) -> bool {
    node.call(pid, (), T).ok().and_then(|m| m.downcast::<u64>().ok()) == Some(42)
}

// ---------------------------------------------------------------------------
// 1. Two versions at once

#[test]
fn two_versions_run_at_once_and_processes_move_from_old_to_current() {
    let (node, _dir) = node_with_code();
    let code = node.code_server().unwrap();
    let v1 = code.load(&support::library("counter-v1")).unwrap();
    assert_eq!(
        (v1.name.as_str(), v1.version.clone(), v1.previous.clone(), v1.changed),
        ("counter", version("1.0.0"), None, true)
    );
    let a = spawn_counter(&node, json!({"label": "a", "count": 10}));
    let b = spawn_counter(&node, json!({"label": "b", "count": 20}));
    assert_eq!(counter_versions(&code), current_and_old(("1.0.0", 2), None));
    assert!(!code.check_process_code(a, "counter"), "nothing is old before a second version");

    let v2 = code.load(&support::library("counter-v2")).unwrap();
    assert_eq!(
        (v2.version.clone(), v2.previous.clone(), v2.changed),
        (version("2.0.0"), Some(version("1.0.0")), true)
    );
    assert_ne!(v1.sha256, v2.sha256);
    let c = spawn_counter(&node, json!({"label": "c", "count": 30}));
    assert_eq!(version_of(&node, c), "2.0.0", "a process spawned after the load runs the new version");
    assert_eq!(state(&node, c), json!({"total": 30, "label": "c", "adds": 0}));

    let modules = code.which_modules();
    assert_eq!(modules.len(), 1);
    let counter = &modules[0];
    let current = counter.current.as_ref().expect("a current version");
    let old = counter.old.as_ref().expect("an old version");
    assert_eq!(
        (current.version.clone(), current.sha256.as_str(), current.processes),
        (version("2.0.0"), v2.sha256.as_str(), 1)
    );
    assert_eq!(
        (old.version.clone(), old.sha256.as_str(), old.processes),
        (version("1.0.0"), v1.sha256.as_str(), 2)
    );
    assert_eq!(code.old("counter").unwrap().processes(), sorted(vec![a, b]));
    assert_eq!(code.current("counter").unwrap().processes(), vec![c]);

    assert!(code.check_process_code(a, "counter"));
    assert!(code.check_process_code(b, "counter"));
    assert!(!code.check_process_code(c, "counter"), "c runs current code");
    assert!(!code.check_process_code(a, "other-module"));
    let native = node.spawn(Native).unwrap();
    assert!(!code.check_process_code(native, "counter"));

    // An old process keeps its old code, message after message, until moved.
    node.cast_json(a, &json!({"Add": 1})).unwrap();
    assert_eq!(node.call_json(a, &json!({"Add": 2}), T).unwrap(), json!(13));
    assert_eq!(version_of(&node, a), "1.0.0");
    assert_eq!(state(&node, a), json!({"count": 13, "label": "a"}), "v1's state shape");
    assert!(code.check_process_code(a, "counter"));

    code.upgrade_process(&node, a, &code.current("counter").unwrap(), &[], T).unwrap();
    assert_eq!(version_of(&node, a), "2.0.0");
    assert_eq!(
        state(&node, a),
        json!({"total": 13, "label": "a", "adds": 0}),
        "state carried over by v2's code_change"
    );
    assert!(!code.check_process_code(a, "counter"));
    assert!(code.check_process_code(b, "counter"));
    assert_eq!(counter_versions(&code), current_and_old(("2.0.0", 2), Some(("1.0.0", 1))));
    assert_eq!(code.current("counter").unwrap().processes(), sorted(vec![a, c]));

    code.upgrade_process(&node, b, &code.current("counter").unwrap(), &[], T).unwrap();
    assert_eq!(counter_versions(&code), current_and_old(("2.0.0", 3), Some(("1.0.0", 0))));
    assert_eq!(get(&node, b), 20);
    node.shutdown();
}

fn sorted(mut pids: Vec<Pid>) -> Vec<Pid> {
    pids.sort();
    pids
}

// ---------------------------------------------------------------------------
// 2. Purge semantics

#[test]
fn soft_purge_refuses_while_a_process_runs_old_code_and_succeeds_once_none_does() {
    let (node, _dir) = node_with_code();
    let code = node.code_server().unwrap();
    code.load(&support::library("counter-v1")).unwrap();
    let moved = spawn_counter(&node, json!({"label": "moved", "count": 1}));
    let stopped = spawn_counter(&node, json!({"label": "stopped"}));
    code.load(&support::library("counter-v2")).unwrap();
    let fresh = spawn_counter(&node, json!({"label": "fresh"}));

    let nothing_to_do = code.soft_purge("no-such-module").unwrap();
    assert_eq!((nothing_to_do.version, nothing_to_do.killed.len(), nothing_to_do.unmapped), (None, 0, None));

    let error = code.soft_purge("counter").unwrap_err();
    match &error {
        CodeError::ProcessesOnOldCode { module, version: v, pids } => {
            assert_eq!((module.as_str(), v), ("counter", &version("1.0.0")));
            assert_eq!(pids, &sorted(vec![moved, stopped]));
        }
        other => panic!("expected ProcessesOnOldCode, got {other:?}"),
    }
    let text = error.to_string();
    assert!(text.contains(&moved.to_string()) && text.contains(&stopped.to_string()), "{text}");
    assert!(text.contains("counter") && text.contains("1.0.0"), "{text}");
    assert_eq!(
        counter_versions(&code),
        current_and_old(("2.0.0", 1), Some(("1.0.0", 2))),
        "a refused soft_purge changes nothing"
    );
    assert_eq!(version_of(&node, moved), "1.0.0", "and kills no one");

    // One moves to the current version, the other ends on its own.
    code.upgrade_process(&node, moved, &code.current("counter").unwrap(), &[], T).unwrap();
    let error = code.soft_purge("counter").unwrap_err();
    assert!(
        matches!(&error, CodeError::ProcessesOnOldCode { pids, .. } if pids == &vec![stopped]),
        "{error:?}"
    );
    let waiter = node.exit_waiter(stopped);
    node.cast_json(stopped, &json!({"Stop": "normal"})).unwrap();
    assert_eq!(waiter.wait(T), Some(ExitReason::Normal));
    // The node reports an exit a moment before the process's state is freed
    // (see soft_purge_succeeds_as_soon_as_the_last_old_process_is_seen_to_exit);
    // wait for the code server to see it gone.
    let deadline = Instant::now() + T;
    while code.check_process_code(stopped, "counter") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }

    let report = code.soft_purge("counter").unwrap();
    assert_eq!(report.module, "counter");
    assert_eq!(report.version, Some(version("1.0.0")));
    assert!(report.killed.is_empty());
    assert_eq!(report.unmapped, Some(true), "the code server held the last reference: {report:?}");
    assert!(code.old("counter").is_none());
    assert_eq!(counter_versions(&code), current_and_old(("2.0.0", 2), None));
    assert_eq!(version_of(&node, moved), "2.0.0");
    assert_eq!(get(&node, moved), 1);
    assert_eq!(version_of(&node, fresh), "2.0.0");

    let again = code.soft_purge("counter").unwrap();
    assert_eq!((again.version, again.unmapped), (None, None), "nothing old is left to purge");
    node.shutdown();
}

#[test]
fn purge_kills_the_processes_on_old_code_and_leaves_current_ones_alone() {
    let (node, _dir) = node_with_code();
    let code = node.code_server().unwrap();
    code.load(&support::library("counter-v1")).unwrap();
    let old_a = spawn_counter(&node, json!({"label": "a"}));
    let old_b = spawn_counter(&node, json!({"label": "b"}));
    code.load(&support::library("counter-v2")).unwrap();
    let current = spawn_counter(&node, json!({"label": "c", "count": 4}));
    let waiters = [node.exit_waiter(old_a), node.exit_waiter(old_b)];
    let current_waiter = node.exit_waiter(current);

    let report = code.purge("counter");
    assert_eq!(report.module, "counter");
    assert_eq!(report.version, Some(version("1.0.0")));
    assert_eq!(report.killed, sorted(vec![old_a, old_b]));
    assert_eq!(
        report.unmapped,
        Some(true),
        "the killed processes are gone, so the code server held the last reference to 1.0.0: {report:?} \
         (fails now and then while the runtime reports exits before freeing the state, see \
         purge_returns_once_the_killed_processes_have_freed_their_state)"
    );
    for waiter in waiters {
        assert_eq!(waiter.wait(T), Some(ExitReason::Killed));
    }
    assert!(!node.is_alive(old_a) && !node.is_alive(old_b));
    assert!(
        matches!(node.call_json(old_a, &json!("Get"), T), Err(JsonCallError::Call(CallError::NoProc(p))) if p == old_a)
    );

    assert!(code.old("counter").is_none());
    assert_eq!(counter_versions(&code), current_and_old(("2.0.0", 1), None));
    assert_eq!(
        current_waiter.wait(Duration::from_millis(20)),
        None,
        "a process on current code survives a purge"
    );
    assert_eq!(version_of(&node, current), "2.0.0");
    assert_eq!(get(&node, current), 4);

    let again = code.purge("counter");
    assert_eq!((again.version, again.killed.len(), again.unmapped), (None, 0, None));
    node.shutdown();
}

#[test]
fn a_third_version_is_refused_while_old_code_runs_and_accepted_after_a_purge() {
    let (node, _dir) = node_with_code();
    let code = node.code_server().unwrap();
    code.load(&support::library("counter-v1")).unwrap();
    let on_v1 = spawn_counter(&node, json!({"label": "one"}));
    code.load(&support::library("counter-v2")).unwrap();
    let on_v2 = spawn_counter(&node, json!({"label": "two", "count": 2}));
    let before = code.which_modules();

    let error = code.load(&support::library("counter-v3")).unwrap_err();
    match &error {
        CodeError::OldCodeInUse { module, version: v, processes, .. } => {
            assert_eq!((module.as_str(), v, *processes), ("counter", &version("1.0.0"), 1));
        }
        other => panic!("expected OldCodeInUse, got {other:?}"),
    }
    let text = error.to_string();
    assert!(text.contains("counter") && text.contains("1.0.0") && text.contains("purge"), "{text}");
    assert_eq!(code.which_modules(), before, "a refused load changes nothing");
    assert_eq!(version_of(&node, on_v1), "1.0.0");
    assert_eq!(version_of(&node, on_v2), "2.0.0");
    assert_eq!(version_of(&node, spawn_counter(&node, json!({}))), "2.0.0", "2.0.0 is still current");

    assert_eq!(code.purge("counter").killed, vec![on_v1]);
    let v3 = code.load(&support::library("counter-v3")).unwrap();
    assert_eq!(
        (v3.version.clone(), v3.previous.clone(), v3.changed),
        (version("3.0.0"), Some(version("2.0.0")), true)
    );
    assert_eq!(counter_versions(&code), current_and_old(("3.0.0", 0), Some(("2.0.0", 2))));
    let on_v3 = spawn_counter(&node, json!({"label": "three", "note": "hi"}));
    assert_eq!(version_of(&node, on_v3), "3.0.0");
    assert_eq!(version_of(&node, on_v2), "2.0.0");

    // Reloading the current library is still a no-op while old code runs;
    // going back to 1.0.0 would be a third version again.
    assert!(!code.load(&support::library("counter-v3")).unwrap().changed);
    assert!(matches!(
        code.load(&support::library("counter-v1")),
        Err(CodeError::OldCodeInUse { processes: 2, .. })
    ));
    node.shutdown();
}

#[test]
fn a_third_version_is_accepted_after_a_soft_purge() {
    let (node, _dir) = node_with_code();
    let code = node.code_server().unwrap();
    code.load(&support::library("counter-v1")).unwrap();
    let pid = spawn_counter(&node, json!({"label": "x", "count": 9}));
    code.load(&support::library("counter-v2")).unwrap();
    assert!(matches!(code.load(&support::library("counter-v3")), Err(CodeError::OldCodeInUse { .. })));
    code.upgrade_process(&node, pid, &code.current("counter").unwrap(), &[], T).unwrap();
    assert!(code.soft_purge("counter").unwrap().killed.is_empty());
    code.load(&support::library("counter-v3")).unwrap();
    code.upgrade_process(&node, pid, &code.current("counter").unwrap(), &payload(json!({"note": "v3"})).0, T)
        .unwrap();
    assert_eq!(state(&node, pid), json!({"total": 9, "label": "x", "adds": 0, "note": "v3"}));
    assert_eq!(counter_versions(&code), current_and_old(("3.0.0", 1), Some(("2.0.0", 0))));
    node.shutdown();
}

#[test]
fn loading_the_same_library_twice_is_a_no_op() {
    let (node, dir) = node_with_code();
    let code = node.code_server().unwrap();
    let first = code.load(&support::library("counter-v1")).unwrap();
    let pid = spawn_counter(&node, json!({"count": 3}));
    let before = code.which_modules();
    let second = code.load(&support::library("counter-v1")).unwrap();
    assert!(!second.changed);
    assert_eq!(
        (second.version.clone(), second.sha256.as_str(), second.previous.clone()),
        (first.version, first.sha256.as_str(), None)
    );
    assert_eq!(code.which_modules(), before, "the version did not become old");
    assert!(code.old("counter").is_none());

    // The same bytes under another path are the same library.
    let copy = dir.path().join("copy-of-counter.so");
    std::fs::copy(support::library("counter-v1"), &copy).unwrap();
    assert!(!code.load(&copy).unwrap().changed);
    assert_eq!(code.which_modules(), before);
    assert!(!code.check_process_code(pid, "counter"));
    assert_eq!(get(&node, pid), 3);
    assert!(code.dir().join(format!("{}.so", first.sha256)).exists(), "content-addressed copy");
    node.shutdown();
}

/// counter 3.0.0 takes 200 ms to free a state labelled "slow-drop".
fn slow_drop_counter_on_old_code(node: &Node, code: &CodeServer) -> Pid {
    code.load(&support::library("counter-v3")).unwrap();
    let pid = spawn_counter(node, json!({"label": "slow-drop"}));
    // OTP's code:delete: the only version becomes old, its process keeps it.
    code.delete("counter").unwrap();
    assert!(code.current("counter").is_none());
    assert!(code.check_process_code(pid, "counter"));
    pid
}

#[test]
fn soft_purge_succeeds_as_soon_as_the_last_old_process_is_seen_to_exit() {
    let (node, _dir) = node_with_code();
    let code = node.code_server().unwrap();
    let pid = slow_drop_counter_on_old_code(&node, &code);
    let waiter = node.exit_waiter(pid);
    node.cast_json(pid, &json!({"Stop": "normal"})).unwrap();
    assert_eq!(waiter.wait(T), Some(ExitReason::Normal));
    assert!(!node.is_alive(pid));
    // Erlang: a process that has exited runs no code.
    assert!(!code.check_process_code(pid, "counter"), "{pid} has exited, yet it still runs old code");
    let report = code.soft_purge("counter").expect("no live process runs old code");
    assert_eq!(report.version, Some(version("3.0.0")));
    assert_eq!(report.unmapped, Some(true), "{report:?}");
    node.shutdown();
}

#[test]
fn purge_returns_once_the_killed_processes_have_freed_their_state() {
    let (node, _dir) = node_with_code();
    let code = node.code_server().unwrap();
    let pid = slow_drop_counter_on_old_code(&node, &code);
    let report = code.purge("counter");
    assert_eq!(report.killed, vec![pid]);
    assert!(!node.is_alive(pid));
    assert_eq!(
        report.unmapped,
        Some(true),
        "purge returned while the killed process still held version 3.0.0: {report:?}"
    );
    node.shutdown();
}

// ---------------------------------------------------------------------------
// 3. Failed migrations leave the process untouched

#[test]
fn a_refused_code_change_leaves_the_process_on_old_code_with_its_state_and_running() {
    let (node, _dir) = node_with_code();
    let code = node.code_server().unwrap();
    code.load(&support::library("counter-v2")).unwrap();
    let refuses = spawn_counter(&node, json!({"label": "refuse-upgrade", "count": 5}));
    assert_eq!(node.call_json(refuses, &json!({"Add": 2}), T).unwrap(), json!(7));
    let panics = spawn_counter(&node, json!({"label": "panic-upgrade", "count": 1}));
    code.load(&support::library("counter-v3")).unwrap();
    let v3 = code.current("counter").unwrap();
    let before = code.which_modules();

    let error = code.upgrade_process(&node, refuses, &v3, &[], T).unwrap_err();
    match &error {
        MigrateError::Migration { pid, module, from, to, error } => {
            assert_eq!(
                (*pid, module.as_str(), from, to),
                (refuses, "counter", &version("2.0.0"), &version("3.0.0"))
            );
            assert!(
                matches!(error, ModuleError::Failed(text) if text.contains("refuses to upgrade")),
                "{error:?}"
            );
        }
        other => panic!("expected Migration, got {other:?}"),
    }
    let text = error.to_string();
    for part in [refuses.to_string().as_str(), "counter", "2.0.0", "3.0.0", "refuses to upgrade"] {
        assert!(text.contains(part), "{text:?} should mention {part:?}");
    }
    assert_eq!(node.resume(refuses), Err(SuspendError::NotSuspended(refuses)), "resumed, not left suspended");
    assert_eq!(version_of(&node, refuses), "2.0.0");
    assert_eq!(state(&node, refuses), json!({"total": 7, "label": "refuse-upgrade", "adds": 1}));
    node.cast_json(refuses, &json!({"Add": 1})).unwrap();
    assert_eq!(get(&node, refuses), 8, "still handles messages");
    assert!(code.check_process_code(refuses, "counter"));

    // A code_change that panics is contained the same way.
    let error = code.upgrade_process(&node, panics, &v3, &[], T).unwrap_err();
    assert!(
        matches!(&error, MigrateError::Migration { pid, error: ModuleError::Panicked(text), .. }
            if *pid == panics && text.contains("code_change was told to panic")),
        "{error:?}"
    );
    assert_eq!(version_of(&node, panics), "2.0.0");
    assert_eq!(state(&node, panics), json!({"total": 1, "label": "panic-upgrade", "adds": 0}));
    assert_eq!(code.which_modules(), before, "no process moved");

    // Through the primitives: a failed prepare keeps the process suspended
    // (its caller resumes it) and loses no message sent meanwhile.
    node.suspend(refuses, T).unwrap();
    node.cast_json(refuses, &json!({"Add": 10})).unwrap();
    assert!(matches!(code.prepare(&node, refuses, &v3, &[]), Err(MigrateError::Migration { .. })));
    assert_eq!(node.message_queue_len(refuses), Some(1), "the cast waits in the mailbox");
    node.resume(refuses).unwrap();
    assert_eq!(get(&node, refuses), 18);
    assert_eq!(version_of(&node, refuses), "2.0.0");
    node.shutdown();
}

#[test]
fn a_prepared_migration_dropped_without_commit_leaves_the_process_on_old_code() {
    let (node, _dir) = node_with_code();
    let code = node.code_server().unwrap();
    code.load(&support::library("counter-v2")).unwrap();
    let pid = spawn_counter(&node, json!({"label": "keep", "count": 3}));
    code.load(&support::library("counter-v3")).unwrap();
    let v3 = code.current("counter").unwrap();
    let extra = payload(json!({"note": "moved"})).0;

    assert!(
        matches!(code.prepare(&node, pid, &v3, &extra), Err(MigrateError::Suspend(SuspendError::NotSuspended(p))) if p == pid),
        "prepare needs a suspended process"
    );

    node.suspend(pid, T).unwrap();
    let prepared = code.prepare(&node, pid, &v3, &extra).unwrap();
    assert_eq!((prepared.pid(), prepared.from(), prepared.to()), (pid, &version("2.0.0"), &version("3.0.0")));
    drop(prepared);
    node.resume(pid).unwrap();
    assert_eq!(version_of(&node, pid), "2.0.0");
    assert_eq!(state(&node, pid), json!({"total": 3, "label": "keep", "adds": 0}));
    assert!(code.check_process_code(pid, "counter"));
    assert_eq!(counter_versions(&code), current_and_old(("3.0.0", 0), Some(("2.0.0", 1))));

    // Committed, the same migration moves it (and its count).
    node.suspend(pid, T).unwrap();
    let prepared = code.prepare(&node, pid, &v3, &extra).unwrap();
    code.commit(&node, prepared).unwrap();
    node.resume(pid).unwrap();
    assert_eq!(version_of(&node, pid), "3.0.0");
    assert_eq!(state(&node, pid), json!({"total": 3, "label": "keep", "adds": 0, "note": "moved"}));
    assert_eq!(counter_versions(&code), current_and_old(("3.0.0", 1), Some(("2.0.0", 0))));

    // And back down: 3.0.0 writes 2.0.0's format.
    code.upgrade_process(&node, pid, &code.old("counter").unwrap(), &[], T).unwrap();
    assert_eq!(state(&node, pid), json!({"total": 3, "label": "keep", "adds": 0}));
    assert_eq!(counter_versions(&code), current_and_old(("3.0.0", 0), Some(("2.0.0", 1))));
    node.shutdown();
}

#[test]
fn migrating_a_native_process_is_refused_and_leaves_it_running() {
    let (node, _dir) = node_with_code();
    let code = node.code_server().unwrap();
    code.load(&support::library("counter-v1")).unwrap();
    let native = node.spawn(Native).unwrap();
    let v1 = code.current("counter").unwrap();
    let error = code.upgrade_process(&node, native, &v1, &[], T).unwrap_err();
    assert!(matches!(error, MigrateError::NotAModuleProcess(p) if p == native), "{error:?}");
    assert!(error.to_string().contains(&native.to_string()));
    assert_eq!(node.resume(native), Err(SuspendError::NotSuspended(native)));
    assert!(native_answers(&node, native));
    assert_eq!(counter_versions(&code), current_and_old(("1.0.0", 0), None));
    node.shutdown();
}

// ---------------------------------------------------------------------------
// 4. Bad input: a clear error naming the file; nothing loaded changes

/// A node with counter 1.0.0 loaded and one counter (count 1) running.
struct Baseline {
    node: Node,
    dir: tempfile::TempDir,
    code: Arc<CodeServer>,
    pid: Pid,
    count: Cell<u64>,
    before: Vec<ModuleInfo>,
}

impl Baseline {
    fn new() -> Baseline {
        let (node, dir) = node_with_code();
        let code = node.code_server().unwrap();
        code.load(&support::library("counter-v1")).unwrap();
        let pid = spawn_counter(&node, json!({"label": "survivor", "count": 1}));
        let before = code.which_modules();
        Baseline { node, dir, code, pid, count: Cell::new(1), before }
    }

    /// Loads `path`, expecting an error whose text names it; then checks
    /// that nothing changed and the running counter still answers.
    fn refused(&self, path: &Path) -> CodeError {
        let error = self.code.load(path).expect_err("the load must fail");
        let text = error.to_string();
        assert!(text.contains(&path.display().to_string()), "{text:?} should name {}", path.display());
        self.unchanged();
        error
    }

    fn unchanged(&self) {
        assert_eq!(self.code.which_modules(), self.before, "nothing loaded changed");
        assert_eq!(version_of(&self.node, self.pid), "1.0.0");
        let count = self.count.get() + 1;
        assert_eq!(self.node.call_json(self.pid, &json!({"Add": 1}), T).unwrap(), json!(count));
        self.count.set(count);
    }

    fn file(&self, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

#[test]
fn a_text_file_is_not_a_library() {
    let base = Baseline::new();
    let path = base.file("notes.txt", b"this is not a shared library\n");
    let error = base.refused(&path);
    assert!(matches!(&error, CodeError::Load(LoadError::NotALibrary { path: p }) if p == &path), "{error:?}");
    let empty = base.file("empty.so", b"");
    assert!(matches!(base.refused(&empty), CodeError::Load(LoadError::NotALibrary { .. })));
    let missing = base.dir.path().join("missing.so");
    assert!(matches!(base.refused(&missing), CodeError::Load(LoadError::Io { path: p, .. }) if p == missing));
    base.node.shutdown();
}

#[test]
fn a_truncated_library_is_refused() {
    // Were the loader to let dlopen see a truncated ELF, it would fault
    // (SIGBUS) and kill every test of this binary: run in a child process.
    support::run_isolated("a_truncated_library_is_refused", || {
        let base = Baseline::new();
        let library = std::fs::read(support::library("counter-v1")).unwrap();
        let full = library.len();
        for (name, len) in [
            ("last-byte", full - 1),
            ("most", full * 9 / 10),
            ("half", full / 2),
            ("headers-only", 100),
            ("header-cut", 10),
        ] {
            let path = base.file(&format!("truncated-{name}.so"), &library[..len]);
            let error = base.refused(&path);
            assert!(
                matches!(&error, CodeError::Load(LoadError::Malformed { path: p, .. }) if p == &path),
                "{name}: {error:?}"
            );
            assert!(error.to_string().contains("truncated"), "{error}");
        }
        base.node.shutdown();
    });
}

#[test]
fn a_library_without_the_export_is_refused() {
    let base = Baseline::new();
    let path = support::library("no-export");
    let error = base.refused(&path);
    assert!(
        matches!(&error, CodeError::Load(LoadError::NoExport { path: p, symbol }) if p == &path && *symbol == "relive_module_vtable"),
        "{error:?}"
    );
    assert!(error.to_string().contains("relive_module_vtable"), "{error}");
    base.node.shutdown();
}

#[test]
fn a_library_with_a_wrong_magic_number_is_refused() {
    let base = Baseline::new();
    let path = support::library("bad-magic");
    let error = base.refused(&path);
    assert!(
        matches!(&error, CodeError::Load(LoadError::BadMagic { path: p, found: 0xdead }) if p == &path),
        "{error:?}"
    );
    assert!(error.to_string().contains("0x000000000000dead"), "{error}");
    base.node.shutdown();
}

#[test]
fn a_library_of_another_abi_version_is_refused() {
    let base = Baseline::new();
    let path = support::library("bad-abi");
    let error = base.refused(&path);
    assert!(
        matches!(&error, CodeError::Load(LoadError::AbiMismatch { path: p, found: 999 }) if p == &path),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains("999") && text.contains(&relive_abi::ABI_VERSION.to_string()), "{text}");
    base.node.shutdown();
}

#[test]
fn another_library_claiming_a_loaded_name_and_version_is_refused() {
    let base = Baseline::new();
    // A rebuild of counter 1.0.0 (same types, other bytes): a clash.
    let mut bytes = std::fs::read(support::library("counter-v1")).unwrap();
    bytes.extend_from_slice(b"\0another build of counter 1.0.0");
    let rebuilt = base.file("libcounter_v1_rebuilt.so", &bytes);
    let error = base.refused(&rebuilt);
    match &error {
        CodeError::VersionClash { path, module, version: v } => {
            assert_eq!((path, module.as_str(), v), (&rebuilt, "counter", &version("1.0.0")));
        }
        other => panic!("expected VersionClash, got {other:?}"),
    }
    assert!(error.to_string().contains("bump the version"), "{error}");

    // Same name and version, other state layout.
    let clash = support::library("counter-v1-clash");
    let error = base.refused(&clash);
    match &error {
        CodeError::LayoutChanged { path, module, version: v } => {
            assert_eq!((path, module.as_str(), v), (&clash, "counter", &version("1.0.0")));
        }
        other => panic!("expected LayoutChanged, got {other:?}"),
    }
    base.node.shutdown();
}

#[test]
fn init_that_panics_or_fails_fails_the_spawn_with_the_reason() {
    let base = Baseline::new();
    let node = &base.node;
    match node.spawn_module("counter", payload(json!({"panic": true})), T) {
        Err(SpawnError::InitFailed(pid, ExitReason::Panic(text))) => {
            assert_eq!(&*text, "counter init was told to panic");
            assert!(!node.is_alive(pid));
        }
        other => panic!("expected InitFailed with a panic, got {other:?}"),
    }
    match node.spawn_module("counter", payload(json!({"fail": true})), T) {
        Err(error @ SpawnError::InitFailed(pid, ExitReason::Error(_))) => {
            let text = error.to_string();
            assert!(text.contains("counter init was told to fail"), "{text}");
            assert!(text.contains("counter 1.0.0"), "names the module: {text}");
            assert!(!node.is_alive(pid));
        }
        other => panic!("expected InitFailed with an error, got {other:?}"),
    }
    match node.spawn_module("counter", payload(json!({"count": "many"})), T) {
        Err(SpawnError::InitFailed(_, ExitReason::Error(text))) => {
            assert!(text.contains("did not decode"), "{text}");
        }
        other => panic!("expected InitFailed for an undecodable init argument, got {other:?}"),
    }
    assert!(matches!(
        node.spawn_module("no-such-module", payload(json!({})), T),
        Err(SpawnError::UnknownModule(name)) if name == "no-such-module"
    ));
    base.unchanged();
    base.node.shutdown();
}

// ---------------------------------------------------------------------------
// 5. A module's panic crashes only its process

#[test]
fn a_panicking_handler_crashes_only_its_process() {
    let (node, _dir) = node_with_code();
    let code = node.code_server().unwrap();
    code.load(&support::library("counter-v1")).unwrap();
    let doomed = spawn_counter(&node, json!({"label": "doomed"}));
    let other = spawn_counter(&node, json!({"label": "other", "count": 7}));
    let waiter = node.exit_waiter(doomed);

    // The handler's panic is contained at the module boundary and ends the
    // process with it as reason; the caller learns it as the callee's exit.
    let crash = ExitReason::Panic("counter was told to crash".into());
    match node.call_json(doomed, &json!("Crash"), T) {
        Err(JsonCallError::Call(CallError::Exited(pid, reason))) => {
            assert_eq!((pid, reason), (doomed, crash.clone()));
        }
        other => panic!("expected CallError::Exited with the panic, got {other:?}"),
    }
    assert_eq!(waiter.wait(T), Some(crash));
    assert!(!node.is_alive(doomed));
    assert_eq!(get(&node, other), 7, "other counters keep answering");
    assert_eq!(node.call_json(other, &json!({"Add": 1}), T).unwrap(), json!(8));
    node.shutdown();
}

#[test]
fn a_supervisor_restarts_a_crashed_module_child_on_the_current_version() {
    let (node, _dir) = node_with_code();
    let code = node.code_server().unwrap();
    code.load(&support::library("counter-v1")).unwrap();
    let child = code.child_spec("counter", "counter", payload(json!({"label": "supervised"})).0);
    let sup = supervisor::start(&node, SupervisorSpec::new(Strategy::OneForOne, vec![child])).unwrap();
    let child_pid = || supervisor::which_children(&node, sup, T).unwrap()[0].pid;
    let first = child_pid().expect("the child runs");
    assert_eq!(version_of(&node, first), "1.0.0");
    assert_eq!(node.call_json(first, &json!({"Add": 5}), T).unwrap(), json!(5));

    code.load(&support::library("counter-v2")).unwrap();
    assert!(code.check_process_code(first, "counter"), "the child keeps old code");
    let crashed = node.call_json(first, &json!("Crash"), T);
    assert!(
        matches!(&crashed, Err(JsonCallError::Call(CallError::Exited(p, ExitReason::Panic(_)))) if *p == first),
        "{crashed:?}"
    );

    let deadline = Instant::now() + T;
    let second = loop {
        match child_pid() {
            Some(pid) if pid != first => break pid,
            _ if Instant::now() > deadline => panic!("the supervisor did not restart the child"),
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    assert_eq!(version_of(&node, second), "2.0.0", "restarted on the current version");
    assert_eq!(
        state(&node, second),
        json!({"total": 0, "label": "supervised", "adds": 0}),
        "with a fresh state"
    );
    assert!(node.is_alive(sup));
    assert_eq!(counter_versions(&code), current_and_old(("2.0.0", 1), Some(("1.0.0", 0))));
    node.shutdown();
}

// ---------------------------------------------------------------------------
// 6. The JSON bridge

#[test]
fn the_json_bridge_refuses_bad_requests_and_non_module_processes() {
    let (node, _dir) = node_with_code();
    let code = node.code_server().unwrap();
    code.load(&support::library("counter-v1")).unwrap();
    let pid = spawn_counter(&node, json!({"count": 1}));

    match node.call_json(pid, &json!({"Multiply": 2}), T) {
        Err(JsonCallError::Refused(text)) => {
            assert!(text.contains("did not decode"), "mentions the decode error: {text}");
            assert!(text.contains("counter 1.0.0"), "names the module: {text}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(get(&node, pid), 1, "a refused request does not hurt the process");

    node.cast_json(pid, &json!({"Add": 3})).unwrap();
    assert_eq!(node.call_json(pid, &json!("Get"), T).unwrap(), json!(4));
    // A plain message goes to handle_info (the counter adds numbers).
    node.send(pid, json!(5)).unwrap();
    assert_eq!(get(&node, pid), 9);
    // A cast or message the module cannot decode is dropped; the process lives.
    node.cast_json(pid, &json!({"Multiply": 2})).unwrap();
    node.send(pid, json!("not a number")).unwrap();
    node.send(pid, 17u8).unwrap();
    assert_eq!(get(&node, pid), 9);

    let native = node.spawn(Native).unwrap();
    assert_eq!(node.call_json(native, &json!("Get"), T), Err(JsonCallError::NotAModule));
    assert!(native_answers(&node, native));

    let waiter = node.exit_waiter(pid);
    node.cast_json(pid, &json!({"Stop": "normal"})).unwrap();
    assert_eq!(waiter.wait(T), Some(ExitReason::Normal));
    assert_eq!(node.call_json(pid, &json!("Get"), T), Err(JsonCallError::Call(CallError::NoProc(pid))));
    node.shutdown();
}
