//! The controller's windows and side paths on the counter example: the
//! health window (rollback on a crash, including of a supervised child
//! restarted on the new code, and a commit when nothing crashes), the
//! canary (passing, and failing with the rest never moved), the dry run
//! (failures named, nothing changed), `suspend_together` and named
//! updates, the report's content, and explicit rollbacks that are refused.
//!
//! A window's crash counts from the moment the controller starts watching,
//! which a test cannot observe: the tests wait until every process is on
//! the new code, then a margin, before crashing one, and use windows long
//! enough for that margin (a crash ends a window early, so a long window
//! costs nothing when it fails).

#[path = "../../runtime/tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use relive_runtime::supervisor::{self, Strategy};
use relive_runtime::{CodeServer, Node, Pid, SupervisorSpec};
use relive_upgrader::{
    Canary, Controller, Instruction, Options, Outcome, Plan, Processes, PurgeMode, Report, UpgradeError,
};
use serde_json::{Value, json};
use support::{node_with_code, payload};

const T: Duration = Duration::from_secs(5);
/// Between "every process is on the new code" and the first crash, so the
/// controller has started watching.
const SETTLE: Duration = Duration::from_millis(200);
/// A window a test ends early with a crash.
const LONG_WINDOW: Duration = Duration::from_secs(4);

fn spawn_counter(node: &Node, init: Value) -> Pid {
    node.spawn_module("counter", payload(init), T).expect("spawning a counter")
}

/// `n` counters labelled c0.. with count i.
fn spawn_counters(node: &Node, n: usize) -> Vec<Pid> {
    (0..n).map(|i| spawn_counter(node, json!({"label": format!("c{i}"), "count": i}))).collect()
}

fn call(node: &Node, pid: Pid, request: Value) -> Value {
    node.call_json(pid, &request, T).unwrap_or_else(|e| panic!("{pid} answers {request}: {e:?}"))
}

fn version_of(node: &Node, pid: Pid) -> String {
    call(node, pid, json!("Version")).as_str().expect("Version answers a string").to_string()
}

fn get(node: &Node, pid: Pid) -> u64 {
    call(node, pid, json!("Get")).as_u64().expect("Get answers a number")
}

/// Crashes `pid` (its handler panics) and waits for it to be gone.
fn crash(node: &Node, pid: Pid) {
    let waiter = node.exit_waiter(pid);
    assert!(node.call_json(pid, &json!("Crash"), T).is_err(), "{pid} crashed");
    assert!(waiter.wait(T).is_some(), "{pid} exited");
}

/// The processes on `version` of the counter, if it is current.
fn on_current(code: &CodeServer, version: &str) -> Option<Vec<Pid>> {
    code.current("counter").filter(|c| c.version().to_string() == version).map(|c| c.processes())
}

fn current_version(code: &CodeServer) -> String {
    code.current("counter").expect("counter is loaded").version().to_string()
}

/// Polls `check` until it gives a value, at most 10 s.
fn wait_for<R>(what: &str, mut check: impl FnMut() -> Option<R>) -> R {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn load(library: &str) -> Instruction {
    Instruction::LoadModule { module: "counter".into(), path: support::library(library) }
}

fn update(processes: Processes, extra: Value, suspend_together: bool) -> Instruction {
    Instruction::Update { module: "counter".into(), processes, extra, suspend_together }
}

fn to_v2() -> Plan {
    Plan::new("counter 1.0.0 → 2.0.0", vec![load("counter-v2"), update(Processes::All, Value::Null, false)])
}

fn rolled_back(result: Result<Report, UpgradeError>) -> (String, Report) {
    match result {
        Err(UpgradeError::RolledBack { reason, report }) => (reason, *report),
        Err(other) => panic!("expected RolledBack, got {other}"),
        Ok(report) => panic!("expected RolledBack, got a commit:\n{report}"),
    }
}

fn aborted(result: Result<Report, UpgradeError>) -> (relive_upgrader::Failure, Report) {
    match result {
        Err(UpgradeError::Aborted { failure, report }) => (*failure, *report),
        Err(other) => panic!("expected Aborted, got {other}"),
        Ok(report) => panic!("expected Aborted, got a commit:\n{report}"),
    }
}

// ---------------------------------------------------------------------------
// 1. Health window

#[test]
fn a_crash_in_the_health_window_rolls_everything_back_keeping_what_ran_on_the_new_code() {
    let (node, _dir) = node_with_code();
    let code = node.code_server().unwrap();
    code.load(&support::library("counter-v1")).unwrap();
    let pids = spawn_counters(&node, 20);
    let controller = Controller::new(&node).unwrap();
    // A crash ends the window at once: its length is only a margin for a
    // loaded machine (the commit test below uses 500 ms).
    let options = Options { health_window: LONG_WINDOW, max_crashes: 0, ..Options::default() };

    let result = std::thread::scope(|s| {
        let apply = s.spawn(|| controller.apply(&to_v2(), &options));
        let moved = wait_for("all 20 on 2.0.0", || on_current(&code, "2.0.0").filter(|p| p.len() == 20));
        let mut sorted = pids.clone();
        sorted.sort();
        assert_eq!(moved, sorted, "every counter moved");
        std::thread::sleep(SETTLE);
        // Five counters handle messages on 2.0.0 (they must be downgraded,
        // keeping the additions), the others handle nothing (their kept
        // 1.0.0 state comes back).
        for pid in &pids[..5] {
            node.cast_json(*pid, &json!({"Add": 10})).unwrap();
            assert_eq!(version_of(&node, *pid), "2.0.0");
        }
        assert!(controller.running().is_some(), "still in the window");
        crash(&node, pids[19]);
        apply.join().unwrap()
    });
    let (reason, report) = rolled_back(result);
    assert!(reason.contains("health window"), "{reason}");
    assert!(matches!(&report.outcome, Outcome::RolledBack { .. }), "{report}");
    let health = report.health.as_ref().expect("a health report");
    assert!(!health.passed, "{report}");
    assert_eq!(health.crashes, 1, "{report}");
    assert_eq!(report.moved, 20, "{report}");
    let rollback = report.rollback.as_ref().expect("a rollback report");
    assert!(rollback.complete(), "{report}");
    assert_eq!((rollback.downgraded, rollback.restored), (5, 14), "{report}");
    assert_eq!(rollback.unloaded, vec!["counter 2.0.0".to_string()], "{report}");

    assert!(!node.is_alive(pids[19]));
    for (i, pid) in pids[..19].iter().enumerate() {
        assert_eq!(version_of(&node, *pid), "1.0.0", "{pid} is back on 1.0.0");
        let expected = if i < 5 { i + 10 } else { i };
        assert_eq!(get(&node, *pid), expected as u64, "{pid} kept its count");
    }
    assert_eq!(current_version(&code), "1.0.0");
    assert!(code.old("counter").is_none(), "2.0.0 is unloaded, nothing is old");
    let mut survivors = pids[..19].to_vec();
    survivors.sort();
    assert_eq!(code.current("counter").unwrap().processes(), survivors);
    assert!(matches!(controller.rollback(&options), Err(UpgradeError::NothingToRollBack)));
    let shown = serde_json::to_value(&report).unwrap();
    assert_eq!(shown["outcome"], json!("rolled_back"), "{shown}");
    assert_eq!(shown["rollback"]["downgraded"], json!(5), "{shown}");
    node.shutdown();
}

#[test]
fn a_health_window_without_crashes_commits() {
    let (node, _dir) = node_with_code();
    let code = node.code_server().unwrap();
    code.load(&support::library("counter-v1")).unwrap();
    let pids = spawn_counters(&node, 20);
    let controller = Controller::new(&node).unwrap();
    let options = Options { health_window: Duration::from_millis(500), max_crashes: 0, ..Options::default() };
    let report = controller.apply(&to_v2(), &options).unwrap();
    assert!(report.committed(), "{report}");
    let health = report.health.as_ref().expect("a health report");
    assert!(health.passed, "{report}");
    assert_eq!(health.crashes, 0, "{report}");
    assert!(health.watched_ms >= 499.0, "watched the whole window: {report}");
    assert!(report.total_ms >= report.upgrade_ms + 499.0, "the window counts in the total: {report}");
    assert!(report.rollback.is_none());
    assert_eq!(report.moved, 20);
    for (i, pid) in pids.iter().enumerate() {
        assert_eq!(version_of(&node, *pid), "2.0.0");
        assert_eq!(get(&node, *pid), i as u64);
    }
    assert_eq!(current_version(&code), "2.0.0");
    node.shutdown();
}

// ---------------------------------------------------------------------------
// 2. Health window with a supervisor

#[test]
fn a_rollback_moves_a_child_restarted_on_the_new_code_during_the_window_back_too() {
    let (node, _dir) = node_with_code();
    let code = node.code_server().unwrap();
    code.load(&support::library("counter-v1")).unwrap();
    let child = code.child_spec("counter", "counter", payload(json!({"label": "supervised"})).0);
    let sup = supervisor::start(&node, SupervisorSpec::new(Strategy::OneForOne, vec![child])).unwrap();
    let child_pid = || supervisor::which_children(&node, sup, T).unwrap()[0].pid;
    let first = child_pid().expect("the child runs");
    assert_eq!(version_of(&node, first), "1.0.0");
    let others = spawn_counters(&node, 5);
    let controller = Controller::new(&node).unwrap();
    // One crash is tolerated: the child's. The second, of another counter,
    // rolls back, once the restarted child is known to run 2.0.0.
    let options = Options { health_window: LONG_WINDOW, max_crashes: 1, ..Options::default() };

    let (result, second) = std::thread::scope(|s| {
        let apply = s.spawn(|| controller.apply(&to_v2(), &options));
        wait_for("all 6 on 2.0.0", || on_current(&code, "2.0.0").filter(|p| p.len() == 6));
        std::thread::sleep(SETTLE);
        crash(&node, first);
        let second = wait_for("the child's restart", || child_pid().filter(|pid| *pid != first));
        assert_eq!(version_of(&node, second), "2.0.0", "restarted on the current version");
        assert!(code.current("counter").unwrap().processes().contains(&second));
        assert!(controller.running().is_some(), "still in the window");
        crash(&node, others[4]);
        (apply.join().unwrap(), second)
    });
    let (_, report) = rolled_back(result);
    assert_eq!(report.health.as_ref().unwrap().crashes, 2, "{report}");
    let rollback = report.rollback.as_ref().unwrap();
    assert!(rollback.complete(), "{report}");
    // The restarted child (no kept state) is downgraded; the four other
    // survivors get their kept state back.
    assert_eq!((rollback.downgraded, rollback.restored), (1, 4), "{report}");
    assert_eq!(rollback.unloaded, vec!["counter 2.0.0".to_string()]);

    assert_eq!(child_pid(), Some(second), "the child was moved back, not restarted again");
    assert_eq!(version_of(&node, second), "1.0.0");
    assert_eq!(call(&node, second, json!("State")), json!({"count": 0, "label": "supervised"}));
    for pid in &others[..4] {
        assert_eq!(version_of(&node, *pid), "1.0.0");
    }
    assert_eq!(current_version(&code), "1.0.0");
    assert!(code.old("counter").is_none());
    assert!(node.is_alive(sup));
    node.shutdown();
}

// ---------------------------------------------------------------------------
// 3. Canary

#[test]
fn a_passing_canary_moves_a_quarter_first_then_the_rest() {
    let (node, _dir) = node_with_code();
    let code = node.code_server().unwrap();
    code.load(&support::library("counter-v1")).unwrap();
    let pids = spawn_counters(&node, 20);
    let controller = Controller::new(&node).unwrap();
    let options =
        Options { canary: Some(Canary::new(0.25, Duration::from_millis(300))), ..Options::default() };
    let report = controller.apply(&to_v2(), &options).unwrap();
    assert!(report.committed(), "{report}");
    let canary = report.canary.as_ref().expect("a canary report");
    assert_eq!(canary.module, "counter");
    assert_eq!((canary.canaries, canary.others), (5, 15), "{report}");
    assert!(canary.passed, "{report}");
    assert_eq!((canary.new_crashes, canary.old_crashes), (0, 0));
    assert_eq!(report.moved, 20, "{report}");
    assert_eq!(report.pause.count, 20);
    for (i, pid) in pids.iter().enumerate() {
        assert_eq!(version_of(&node, *pid), "2.0.0");
        assert_eq!(get(&node, *pid), i as u64);
    }
    assert!(code.old("counter").unwrap().processes().is_empty());
    node.shutdown();
}

#[test]
fn a_canary_that_crashes_aborts_and_the_others_never_move() {
    let (node, _dir) = node_with_code();
    let code = node.code_server().unwrap();
    code.load(&support::library("counter-v1")).unwrap();
    let pids = spawn_counters(&node, 20);
    let controller = Controller::new(&node).unwrap();
    // A crash ends the window at once; the long window is only a margin.
    // Every process paused for its migration is told as `Suspended`.
    let suspended = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = suspended.clone();
    let options = Options {
        canary: Some(Canary::new(0.25, LONG_WINDOW)),
        on_phase: Some(relive_upgrader::PhaseHook::new(move |phase| {
            if phase == relive_upgrader::Phase::Suspended {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })),
        ..Options::default()
    };

    let mut seen_on_new: HashSet<Pid> = HashSet::new();
    let (result, canaries, others) = std::thread::scope(|s| {
        let apply = s.spawn(|| controller.apply(&to_v2(), &options));
        let canaries =
            wait_for("5 canaries on 2.0.0", || on_current(&code, "2.0.0").filter(|p| p.len() == 5));
        let others = code.old("counter").expect("1.0.0 is old").processes();
        assert_eq!(others.len(), 15);
        assert!(others.iter().all(|p| !canaries.contains(p)));
        std::thread::sleep(SETTLE);
        seen_on_new.extend(code.current("counter").unwrap().processes());
        crash(&node, canaries[0]);
        // Until the controller is done, nothing more reaches 2.0.0.
        while !apply.is_finished() {
            if let Some(now) = on_current(&code, "2.0.0") {
                seen_on_new.extend(now);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        (apply.join().unwrap(), canaries, others)
    });
    let (failure, report) = aborted(result);
    assert_eq!(failure.instruction, 2, "{failure}");
    assert!(failure.error.contains("canary"), "{failure}");
    let canary = report.canary.as_ref().expect("a canary report");
    assert_eq!((canary.canaries, canary.others), (5, 15), "{report}");
    assert!(!canary.passed, "{report}");
    assert_eq!((canary.new_crashes, canary.old_crashes), (1, 0), "{report}");
    assert_eq!(report.moved, 5, "only the canaries moved: {report}");
    assert_eq!(
        suspended.load(std::sync::atomic::Ordering::SeqCst),
        5,
        "only the canaries were ever suspended: {report}"
    );
    assert_eq!(report.pause_histogram.total(), 5, "{report}");
    let signals: Vec<_> = canary.signals.failed.iter().map(|f| f.signal).collect();
    assert_eq!(signals, vec![relive_upgrader::Signal::Crashes], "{report}");
    let rollback = report.rollback.as_ref().unwrap();
    assert!(rollback.complete(), "{report}");
    assert_eq!((rollback.restored, rollback.downgraded), (4, 0), "{report}");
    assert_eq!(rollback.unloaded, vec!["counter 2.0.0".to_string()]);
    let canary_set: HashSet<Pid> = canaries.iter().copied().collect();
    assert!(seen_on_new.is_subset(&canary_set), "only canaries ever ran 2.0.0: {seen_on_new:?}");

    assert!(!node.is_alive(canaries[0]));
    for (i, pid) in pids.iter().enumerate() {
        if *pid == canaries[0] {
            continue;
        }
        assert_eq!(version_of(&node, *pid), "1.0.0", "{pid} is on 1.0.0");
        assert_eq!(get(&node, *pid), i as u64);
    }
    assert_eq!(current_version(&code), "1.0.0");
    assert!(code.old("counter").is_none());
    let mut survivors: Vec<Pid> = others.into_iter().chain(canaries[1..].iter().copied()).collect();
    survivors.sort();
    assert_eq!(code.current("counter").unwrap().processes(), survivors);
    node.shutdown();
}

// ---------------------------------------------------------------------------
// 4. Dry run

#[test]
fn a_dry_run_names_the_processes_that_would_fail_and_changes_nothing() {
    let (node, dir) = node_with_code();
    let code = node.code_server().unwrap();
    code.load(&support::library("counter-v2")).unwrap();
    let good = spawn_counters(&node, 4);
    let refuse = spawn_counter(&node, json!({"label": "refuse-upgrade", "count": 100}));
    let panics = spawn_counter(&node, json!({"label": "panic-upgrade", "count": 200}));
    let all: Vec<Pid> = good.iter().copied().chain([refuse, panics]).collect();
    let controller = Controller::new(&node).unwrap();
    let plan = Plan::new(
        "counter 2.0.0 → 3.0.0",
        vec![load("counter-v3"), update(Processes::All, json!({"note": "n"}), false)],
    );
    let modules_before = code.which_modules();

    let report = controller.dry_run(&plan, &Options::default()).unwrap();
    assert!(!report.ok(), "{report:?}");
    assert!(report.load_errors.is_empty(), "{report:?}");
    assert_eq!(report.checked, 6, "{report:?}");
    let failed: HashSet<Pid> = report.failures.iter().map(|f| f.pid).collect();
    assert_eq!(failed, HashSet::from([refuse, panics]), "{report:?}");
    assert_eq!(report.failures.len(), 2, "{report:?}");
    assert!(report.failures.iter().all(|f| f.module == "counter"));
    let refused = report.failures.iter().find(|f| f.pid == refuse).unwrap();
    assert!(refused.error.contains("refuses"), "{refused:?}");

    // Nothing changed.
    assert_eq!(current_version(&code), "2.0.0");
    assert_eq!(code.which_modules(), modules_before);
    assert!(controller.running().is_none());
    for (i, pid) in good.iter().enumerate() {
        assert_eq!(version_of(&node, *pid), "2.0.0");
        assert_eq!(get(&node, *pid), i as u64);
    }
    assert_eq!((get(&node, refuse), get(&node, panics)), (100, 200));
    assert!(all.iter().all(|pid| version_of(&node, *pid) == "2.0.0"));

    // A library that is not one is reported, and still nothing changes.
    let text = dir.path().join("not-a-library.so");
    std::fs::write(&text, "not a shared library").unwrap();
    let bad = Plan::new(
        "bad library",
        vec![
            Instruction::LoadModule { module: "counter".into(), path: text.clone() },
            update(Processes::All, Value::Null, false),
        ],
    );
    let report = controller.dry_run(&bad, &Options::default()).unwrap();
    assert!(!report.ok());
    assert_eq!(report.load_errors.len(), 1, "{report:?}");
    assert!(report.load_errors[0].contains("not-a-library.so"), "{report:?}");
    assert_eq!(code.which_modules(), modules_before);

    // Without the two bad counters, the real upgrade goes through.
    for pid in [refuse, panics] {
        let waiter = node.exit_waiter(pid);
        node.cast_json(pid, &json!({"Stop": "normal"})).unwrap();
        assert!(waiter.wait(T).is_some());
    }
    let report = controller.apply(&plan, &Options::default()).unwrap();
    assert!(report.committed(), "{report}");
    assert_eq!(report.moved, 4);
    for (i, pid) in good.iter().enumerate() {
        assert_eq!(version_of(&node, *pid), "3.0.0");
        assert_eq!(get(&node, *pid), i as u64);
        assert_eq!(call(&node, *pid, json!("Note")), json!("n"));
    }
    node.shutdown();
}

// ---------------------------------------------------------------------------
// 5. suspend_together and named processes

#[test]
fn an_update_suspended_together_moves_every_process_with_its_messages() {
    let (node, _dir) = node_with_code();
    let code = node.code_server().unwrap();
    code.load(&support::library("counter-v1")).unwrap();
    let pids = spawn_counters(&node, 10);
    let controller = Controller::new(&node).unwrap();
    let plan = Plan::new("together", vec![load("counter-v2"), update(Processes::All, Value::Null, true)]);
    const ROUNDS: usize = 50;
    let report = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            for _ in 0..ROUNDS {
                for pid in &pids {
                    node.cast_json(*pid, &json!({"Add": 1})).unwrap();
                }
                std::thread::yield_now();
            }
        });
        let report = controller.apply(&plan, &Options::default());
        sender.join().unwrap();
        report
    })
    .unwrap();
    assert!(report.committed(), "{report}");
    assert_eq!(report.moved, 10, "{report}");
    assert_eq!(report.pause.count, 10);
    assert_eq!(report.messages_lost, 0, "{report}");
    // Each is paused for the whole group: every pause is the same.
    let pause = report.pause;
    assert!((pause.max_us - pause.mean_us).abs() <= pause.max_us * 1e-9, "{pause:?}");
    for (i, pid) in pids.iter().enumerate() {
        assert_eq!(version_of(&node, *pid), "2.0.0");
        assert_eq!(get(&node, *pid), (i + ROUNDS) as u64);
    }
    assert!(code.old("counter").unwrap().processes().is_empty());
    node.shutdown();
}

#[test]
fn a_named_update_moves_only_those_processes_and_an_unknown_name_aborts() {
    let (node, _dir) = node_with_code();
    let code = node.code_server().unwrap();
    code.load(&support::library("counter-v1")).unwrap();
    let pids = spawn_counters(&node, 6);
    node.register("alpha", pids[1]).unwrap();
    node.register("beta", pids[4]).unwrap();
    let controller = Controller::new(&node).unwrap();
    let named = |names: &[&str]| {
        Plan::new(
            "named",
            vec![
                load("counter-v2"),
                update(Processes::Named(names.iter().map(|n| n.to_string()).collect()), Value::Null, false),
            ],
        )
    };

    let (failure, report) = aborted(controller.apply(&named(&["alpha", "ghost"]), &Options::default()));
    assert_eq!(failure.instruction, 2, "{failure}");
    assert!(failure.error.contains("ghost"), "{failure}");
    assert!(!failure.error.contains("alpha"), "{failure}");
    assert_eq!(report.moved, 0, "{report}");
    assert_eq!(current_version(&code), "1.0.0");
    assert!(code.old("counter").is_none());
    assert!(pids.iter().all(|pid| version_of(&node, *pid) == "1.0.0"));

    let report = controller.apply(&named(&["alpha", "beta"]), &Options::default()).unwrap();
    assert!(report.committed(), "{report}");
    assert_eq!(report.moved, 2, "{report}");
    for (i, pid) in pids.iter().enumerate() {
        let expected = if i == 1 || i == 4 { "2.0.0" } else { "1.0.0" };
        assert_eq!(version_of(&node, *pid), expected, "counter {i}");
        assert_eq!(get(&node, *pid), i as u64);
    }
    let mut named = vec![pids[1], pids[4]];
    named.sort();
    assert_eq!(code.current("counter").unwrap().processes(), named);
    assert_eq!(code.old("counter").unwrap().processes().len(), 4);
    node.shutdown();
}

// ---------------------------------------------------------------------------
// 6. The report

#[test]
fn the_report_has_a_step_per_instruction_and_serializes() {
    let (node, _dir) = node_with_code();
    let code = node.code_server().unwrap();
    code.load(&support::library("counter-v1")).unwrap();
    let pids = spawn_counters(&node, 8);
    let controller = Controller::new(&node).unwrap();
    let plan = Plan::new(
        "with purge",
        vec![
            load("counter-v2"),
            update(Processes::All, Value::Null, false),
            Instruction::Purge { module: "counter".into(), mode: PurgeMode::Soft },
        ],
    );
    let report = controller.apply(&plan, &Options::default()).unwrap();
    assert!(report.committed(), "{report}");
    assert_eq!(report.plan, "with purge");
    let numbers: Vec<usize> = report.steps.iter().map(|s| s.instruction).collect();
    assert_eq!(numbers, vec![1, 2, 3], "{report:?}");
    assert_eq!(report.steps[0].step, plan.instructions[0].to_string());
    assert_eq!(report.steps[1].step, plan.instructions[1].to_string());
    assert!(report.steps[2].step.starts_with("soft_purge counter"), "{:?}", report.steps[2]);
    assert!(report.steps.iter().all(|s| s.took_us >= 0.0));
    assert_eq!(report.moved, 8);
    assert_eq!(report.pause.count, report.moved);
    assert!(report.pause.max_us >= report.pause.mean_us && report.pause.mean_us > 0.0, "{report}");
    assert!(report.upgrade_ms <= report.total_ms, "{report}");
    assert_eq!(report.messages_lost, 0);
    assert!(report.canary.is_none() && report.health.is_none() && report.rollback.is_none());
    assert!(report.to_string().contains("committed"), "{report}");
    assert!(code.old("counter").is_none(), "purged at commit");
    assert!(pids.iter().all(|pid| version_of(&node, *pid) == "2.0.0"));

    let value = serde_json::to_value(&report).unwrap();
    for key in ["outcome", "moved", "pause", "messages_lost", "steps", "upgrade_ms", "total_ms"] {
        assert!(value.get(key).is_some(), "no {key} in {value}");
    }
    assert_eq!(value["outcome"], json!("committed"));
    assert_eq!(value["moved"], json!(8));
    assert_eq!(value["pause"]["count"], json!(8));
    assert_eq!(value["messages_lost"], json!(0));
    assert_eq!(value["steps"].as_array().unwrap().len(), 3);
    node.shutdown();
}

// ---------------------------------------------------------------------------
// 7. Explicit rollbacks that are refused

#[test]
fn an_explicit_rollback_is_refused_with_nothing_to_undo_or_after_a_purge() {
    let (node, _dir) = node_with_code();
    let code = node.code_server().unwrap();
    code.load(&support::library("counter-v1")).unwrap();
    let pids = spawn_counters(&node, 4);
    let controller = Controller::new(&node).unwrap();
    let options = Options::default();
    assert!(matches!(controller.rollback(&options), Err(UpgradeError::NothingToRollBack)));

    // A rolled back upgrade cannot be rolled back twice.
    let report = controller.apply(&to_v2(), &options).unwrap();
    assert!(report.committed(), "{report}");
    let back = controller.rollback(&options).unwrap();
    assert!(back.rollback.as_ref().unwrap().complete(), "{back}");
    assert!(matches!(controller.rollback(&options), Err(UpgradeError::NothingToRollBack)));
    assert!(pids.iter().all(|pid| version_of(&node, *pid) == "1.0.0"));

    // One that purged the old code is refused, and stays refused.
    let purging = Plan::new(
        "purging",
        vec![
            load("counter-v2"),
            update(Processes::All, Value::Null, false),
            Instruction::Purge { module: "counter".into(), mode: PurgeMode::Soft },
        ],
    );
    assert!(controller.apply(&purging, &options).unwrap().committed());
    for _ in 0..2 {
        let (failure, report) = aborted(controller.rollback(&options));
        assert!(failure.error.contains("purged"), "{failure}");
        assert!(failure.error.contains("purging"), "names the plan: {failure}");
        assert_eq!(failure.module.as_deref(), Some("counter"));
        assert!(report.rollback.is_none(), "{report}");
        assert_eq!(report.moved, 0);
    }
    assert!(controller.running().is_none());
    assert_eq!(current_version(&code), "2.0.0");
    for (i, pid) in pids.iter().enumerate() {
        assert_eq!(version_of(&node, *pid), "2.0.0");
        assert_eq!(get(&node, *pid), i as u64);
    }
    node.shutdown();
}
