//! Fault tests of the upgrade controller on the counter example: each
//! fault (a refused or panicking `code_change`, a child that does not
//! start, a process that exits or cannot reach its migration, a second
//! upgrade, calls and casts in flight) must leave the node either fully
//! upgraded or fully as it was, with every process on loaded code, every
//! count intact and no message lost.

#[path = "../../runtime/tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use relive_runtime::supervisor::{self, Strategy, SupervisorSpec};
use relive_runtime::{CodeServer, Node, Pid};
use relive_upgrader::{
    Controller, Instruction, Options, Plan, Processes, PurgeMode, Report, Restart, Shutdown, UpgradeError,
};
use serde_json::{Value, json};
use support::{node_with_code, payload};

const T: Duration = Duration::from_secs(10);

// ---- helpers ------------------------------------------------------------

/// A node with counter 1.0.0 loaded and a controller.
fn node_on_v1() -> (Node, tempfile::TempDir, Controller) {
    let (node, dir) = node_with_code();
    node.code_server().unwrap().load(&support::library("counter-v1")).unwrap();
    let controller = Controller::new(&node).unwrap();
    (node, dir, controller)
}

fn spawn_counter(node: &Node, label: &str, count: u64) -> Pid {
    node.spawn_module("counter", payload(json!({"label": label, "count": count})), T).unwrap()
}

/// `n` counters labelled c0.., counter i holding i + 1.
fn spawn_counters(node: &Node, n: usize) -> Vec<Pid> {
    (0..n).map(|i| spawn_counter(node, &format!("c{i}"), i as u64 + 1)).collect()
}

fn call(node: &Node, pid: Pid, request: Value) -> Value {
    node.call_json(pid, &request, T).unwrap_or_else(|e| panic!("call {request} to {pid}: {e}"))
}

fn version_of(node: &Node, pid: Pid) -> String {
    call(node, pid, json!("Version")).as_str().unwrap().to_string()
}

fn count_of(node: &Node, pid: Pid) -> u64 {
    call(node, pid, json!("Get")).as_u64().unwrap()
}

/// Every process of `pids` answers `version` and holds its expected count.
fn assert_all_on(node: &Node, pids: &[Pid], version: &str, counts: &[u64]) {
    for (pid, count) in pids.iter().zip(counts) {
        assert_eq!(version_of(node, *pid), version, "{pid} runs {version}");
        assert_eq!(count_of(node, *pid), *count, "{pid} kept its count");
    }
}

/// (version, processes) of the current and old versions of `module`.
type Versions = (Option<(String, usize)>, Option<(String, usize)>);

fn versions(code: &CodeServer, module: &str) -> Versions {
    let info = code.which_modules().into_iter().find(|m| m.name == module);
    let pair = |v: Option<relive_runtime::VersionInfo>| v.map(|v| (v.version.to_string(), v.processes));
    match info {
        Some(info) => (pair(info.current), pair(info.old)),
        None => (None, None),
    }
}

fn v(version: &str, processes: usize) -> Option<(String, usize)> {
    Some((version.to_string(), processes))
}

fn current_version(code: &CodeServer, module: &str) -> Option<String> {
    code.current(module).map(|c| c.version().to_string())
}

/// Polls `condition` until it holds, for at most `T`.
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn update(module: &str, processes: Processes, extra: Value) -> Instruction {
    Instruction::Update { module: module.into(), processes, extra, suspend_together: false }
}

fn load(library: &str) -> Instruction {
    Instruction::LoadModule { module: "counter".into(), path: support::library(library) }
}

fn purge(mode: PurgeMode) -> Instruction {
    Instruction::Purge { module: "counter".into(), mode }
}

/// Loads counter-v2 and moves every counter to it.
fn to_v2() -> Plan {
    Plan::new("counter → 2.0.0", vec![load("counter-v2"), update("counter", Processes::All, Value::Null)])
}

/// Loads counter-v3 and moves every counter to it.
fn to_v3() -> Plan {
    Plan::new(
        "counter → 3.0.0",
        vec![load("counter-v3"), update("counter", Processes::All, json!({"note": "upgraded"}))],
    )
}

fn aborted(result: Result<Report, UpgradeError>) -> (relive_upgrader::Failure, Box<Report>) {
    match result {
        Err(UpgradeError::Aborted { failure, report }) => (*failure, report),
        Err(other) => panic!("expected an aborted upgrade, got {other}"),
        Ok(report) => panic!("expected an aborted upgrade, it committed:\n{report}"),
    }
}

/// Waits until `pid` has a system task queued beyond `before` (its
/// migration), then runs `then`.
fn when_task_queued(node: &Node, pid: Pid, before: u64, then: impl FnOnce()) {
    let deadline = Instant::now() + T;
    while node.mailbox_counts(pid).is_some_and(|c| c.system == before) {
        assert!(Instant::now() < deadline, "no migration was queued for {pid}");
        std::thread::sleep(Duration::from_micros(200));
    }
    then();
}

// ---- 1. code_change fails in one process of many ---------------------------

fn one_code_change_fails(label: &str, expected_error: &str) {
    let (node, _dir, controller) = node_on_v1();
    let code = node.code_server().unwrap();
    let mut pids = spawn_counters(&node, 29);
    let bad = spawn_counter(&node, label, 7);
    pids.insert(13, bad);
    for pid in &pids {
        node.cast_json(*pid, &json!({"Add": 100})).unwrap();
    }
    let counts: Vec<u64> = pids.iter().map(|p| count_of(&node, *p)).collect();

    let report = controller.apply(&to_v2(), &Options::default()).unwrap();
    assert!(report.committed(), "{report}");
    assert_eq!(report.moved, 30, "{report}");
    assert_all_on(&node, &pids, "2.0.0", &counts);

    let (failure, report) = aborted(controller.apply(&to_v3(), &Options::default()));
    assert_eq!(failure.pid, Some(bad), "the failure names the refusing process: {failure}");
    assert_eq!(failure.module.as_deref(), Some("counter"), "{failure}");
    assert_eq!(failure.instruction, 2, "{failure}");
    assert!(failure.error.contains(expected_error), "the module's error is given: {failure}");
    assert!(matches!(report.outcome, relive_upgrader::Outcome::Aborted { .. }));
    let rollback = report.rollback.as_ref().expect("an aborted upgrade reports its rollback");
    assert!(rollback.complete(), "{report}");
    assert_eq!(report.moved, 29, "every other process had moved: {report}");
    assert_eq!(rollback.restored + rollback.downgraded, 29, "{report}");
    assert_eq!(rollback.unloaded, vec!["counter 3.0.0".to_string()], "{report}");

    for pid in &pids {
        assert!(node.is_alive(*pid), "{pid} survived the failed upgrade");
    }
    assert_all_on(&node, &pids, "2.0.0", &counts);
    assert_eq!(current_version(&code, "counter").as_deref(), Some("2.0.0"));
    assert_eq!(versions(&code, "counter"), (v("2.0.0", 30), None), "3.0.0 is gone");
    // The node goes on: the processes still work and a good plan applies.
    for pid in &pids {
        node.cast_json(*pid, &json!({"Add": 1})).unwrap();
    }
    let counts: Vec<u64> = counts.iter().map(|c| c + 1).collect();
    assert_all_on(&node, &pids, "2.0.0", &counts);
    node.shutdown();
}

#[test]
fn a_refused_code_change_in_one_process_undoes_the_whole_upgrade() {
    one_code_change_fails("refuse-upgrade", "refuses to upgrade a counter labelled");
}

#[test]
fn a_panicking_code_change_in_one_process_undoes_the_whole_upgrade() {
    one_code_change_fails("panic-upgrade", "code_change was told to panic");
}

// ---- 2. a new child does not start ------------------------------------------

#[test]
fn a_child_that_does_not_start_undoes_the_loads_updates_and_children_before_it() {
    let (node, _dir, controller) = node_on_v1();
    let code = node.code_server().unwrap();
    let mut spec = SupervisorSpec::new(Strategy::OneForOne, Vec::new());
    spec.name = Some("counters".into());
    let sup = supervisor::start(&node, spec).unwrap();
    assert_eq!(node.whereis("counters"), Some(sup));
    let pids = spawn_counters(&node, 10);
    let counts: Vec<u64> = (1..=10).collect();

    for (bad_args, expected) in [
        (json!({"label": "bad", "panic": true}), "counter init was told to panic"),
        (json!({"label": "bad", "fail": true}), "counter init was told to fail"),
    ] {
        let plan = Plan::new(
            "counter 2.0.0 with new children",
            vec![
                load("counter-v2"),
                Instruction::AddModule { module: "ring".into(), path: support::library("ring") },
                update("counter", Processes::All, Value::Null),
                Instruction::StartChild {
                    supervisor: "counters".into(),
                    id: "good".into(),
                    module: "counter".into(),
                    args: json!({"label": "good", "count": 5}),
                    restart: Restart::Permanent,
                    shutdown: Shutdown::default(),
                },
                Instruction::StartChild {
                    supervisor: "counters".into(),
                    id: "bad".into(),
                    module: "counter".into(),
                    args: bad_args,
                    restart: Restart::Permanent,
                    shutdown: Shutdown::default(),
                },
            ],
        );
        let (failure, report) = aborted(controller.apply(&plan, &Options::default()));
        assert_eq!(failure.instruction, 5, "{failure}");
        assert_eq!(failure.module.as_deref(), Some("counter"), "{failure}");
        assert!(failure.error.contains("bad"), "the failure names the child: {failure}");
        assert!(failure.error.contains(expected), "the failure gives init's reason: {failure}");
        let rollback = report.rollback.as_ref().unwrap();
        assert!(rollback.complete(), "{report}");
        assert_eq!(report.moved, 10, "{report}");

        // Every earlier step is undone: the processes are back on 1.0.0,
        // 2.0.0 and the new module are unloaded, the good child is gone.
        assert_all_on(&node, &pids, "1.0.0", &counts);
        assert_eq!(versions(&code, "counter"), (v("1.0.0", 10), None), "{report}");
        assert!(code.current("ring").is_none(), "add_module undone: {report}");
        let children = supervisor::which_children(&node, "counters", T).unwrap();
        assert!(children.is_empty(), "children started by the plan are removed: {children:?}");
        assert!(node.is_alive(sup), "the supervisor lives on");
    }

    // The same plan without the bad child goes through.
    let plan = Plan::new(
        "counter 2.0.0 with a new child",
        vec![
            load("counter-v2"),
            update("counter", Processes::All, Value::Null),
            Instruction::StartChild {
                supervisor: "counters".into(),
                id: "good".into(),
                module: "counter".into(),
                args: json!({"label": "good", "count": 5}),
                restart: Restart::Permanent,
                shutdown: Shutdown::default(),
            },
        ],
    );
    let report = controller.apply(&plan, &Options::default()).unwrap();
    assert!(report.committed(), "{report}");
    assert_all_on(&node, &pids, "2.0.0", &counts);
    let children = supervisor::which_children(&node, "counters", T).unwrap();
    let good = children.iter().find(|c| &*c.id == "good").and_then(|c| c.pid).expect("good runs");
    assert_eq!(version_of(&node, good), "2.0.0");
    assert_eq!(count_of(&node, good), 5);
    assert_eq!(node.whereis("good"), Some(good), "a started child is registered under its id");

    // Down again (the child stops; its spec stays, so an explicit rollback
    // could restart it), then up again: the start replaces the stopped spec.
    let stop = Plan::new(
        "without the child",
        vec![Instruction::StopChild { supervisor: "counters".into(), id: "good".into() }],
    );
    assert!(controller.apply(&stop, &Options::default()).unwrap().committed());
    assert!(node.whereis("good").is_none());
    let start = Plan::new(
        "with the child again",
        vec![Instruction::StartChild {
            supervisor: "counters".into(),
            id: "good".into(),
            module: "counter".into(),
            args: json!({"label": "good", "count": 9}),
            restart: Restart::Permanent,
            shutdown: Shutdown::default(),
        }],
    );
    let report = controller.apply(&start, &Options::default()).unwrap();
    assert!(report.committed(), "{report}");
    let again = node.whereis("good").expect("the child runs again, under its name");
    assert_eq!(count_of(&node, again), 9, "with the new spec's args");
    node.shutdown();
}

// ---- 3. processes exit during the upgrade ---------------------------------

#[test]
fn processes_that_exit_before_their_migration_are_reported_and_the_rest_move() {
    let (node, _dir, controller) = node_on_v1();
    let pids = spawn_counters(&node, 20);
    let (stops, killed) = (pids[5], pids[12]);
    // Both are held (suspended) so that their migration is queued behind
    // what makes them exit: a Stop cast for one, a kill for the other.
    for pid in [stops, killed] {
        node.suspend(pid, T).unwrap();
    }
    for _ in 0..10 {
        node.cast_json(stops, &json!({"Add": 1})).unwrap();
    }
    node.cast_json(stops, &json!({"Stop": "normal"})).unwrap();
    let tasks_before = |pid| node.mailbox_counts(pid).unwrap().system;
    let (stops_before, killed_before) = (tasks_before(stops), tasks_before(killed));

    let report = std::thread::scope(|s| {
        s.spawn(|| {
            when_task_queued(&node, stops, stops_before, || node.resume(stops).unwrap());
        });
        s.spawn(|| {
            when_task_queued(&node, killed, killed_before, || {
                node.exit(killed, relive_runtime::ExitReason::Kill)
            });
        });
        controller.apply(&to_v2(), &Options::default())
    })
    .unwrap();

    assert!(report.committed(), "{report}");
    let mut exited = vec![stops, killed];
    exited.sort();
    assert_eq!(report.exited, exited, "{report}");
    assert_eq!(report.moved, 18, "{report}");
    assert_eq!(report.messages_lost, 0, "{report}");
    assert!(!node.is_alive(stops) && !node.is_alive(killed));
    let rest: Vec<Pid> = pids.iter().copied().filter(|p| !exited.contains(p)).collect();
    let counts: Vec<u64> =
        pids.iter().enumerate().filter(|(_, p)| !exited.contains(p)).map(|(i, _)| i as u64 + 1).collect();
    assert_all_on(&node, &rest, "2.0.0", &counts);
    let code = node.code_server().unwrap();
    eventually("the exited processes are off 1.0.0's list", || {
        versions(&code, "counter") == (v("2.0.0", 18), v("1.0.0", 0))
    });
    node.shutdown();
}

// ---- 4. upgrades never interleave ------------------------------------------

#[test]
fn an_upgrade_or_rollback_asked_for_while_one_runs_is_refused() {
    let (node, _dir, controller) = node_on_v1();
    let pids = spawn_counters(&node, 10);
    let counts: Vec<u64> = (1..=10).collect();
    controller.apply(&to_v2(), &Options::default()).unwrap();
    let slow = Options { health_window: Duration::from_secs(1), ..Options::default() };

    std::thread::scope(|s| {
        let first = s.spawn(|| controller.apply(&to_v3(), &slow));
        eventually("the first upgrade runs", || controller.running().is_some());
        match controller.apply(&to_v2(), &Options::default()) {
            Err(UpgradeError::Busy { running }) => assert_eq!(running, "counter → 3.0.0"),
            other => panic!("a second upgrade must be refused as busy, got {other:?}"),
        }
        match controller.rollback(&Options::default()) {
            Err(UpgradeError::Busy { running }) => assert_eq!(running, "counter → 3.0.0"),
            other => panic!("a rollback during an upgrade must be refused as busy, got {other:?}"),
        }
        assert!(
            matches!(controller.dry_run(&to_v3(), &Options::default()), Err(UpgradeError::Busy { .. })),
            "a dry run during an upgrade is refused too"
        );
        assert!(first.join().unwrap().is_ok_and(|r| r.committed()), "the first upgrade is unharmed");
    });
    assert!(controller.running().is_none());
    assert_all_on(&node, &pids, "3.0.0", &counts);
    // Once it is over the refused requests go through.
    let back = controller.rollback(&Options::default()).unwrap();
    assert!(back.rollback.as_ref().unwrap().complete(), "{back}");
    assert_all_on(&node, &pids, "2.0.0", &counts);
    node.shutdown();
}

// ---- 5. calls in flight across the switch ------------------------------------

#[test]
fn calls_in_flight_across_the_switch_all_get_their_reply_exactly_once() {
    let (node, _dir, controller) = node_on_v1();
    let code = node.code_server().unwrap();
    let pids: Vec<Pid> = (0..8).map(|i| spawn_counter(&node, &format!("c{i}"), 0)).collect();
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);

    let per_thread: Vec<HashMap<Pid, u64>> = std::thread::scope(|s| {
        let callers: Vec<_> = (0..4)
            .map(|t| {
                let (node, pids, stop, done) = (&node, &pids, &stop, &done);
                s.spawn(move || {
                    let mut ok: HashMap<Pid, u64> = HashMap::new();
                    let mut last: HashMap<Pid, u64> = HashMap::new();
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed) {
                        let pid = pids[i % pids.len()];
                        i += 1;
                        let reply = node
                            .call_json(pid, &json!({"Add": 1}), T)
                            .unwrap_or_else(|e| panic!("a call to {pid} during the upgrade failed: {e}"));
                        let total = reply.as_u64().expect("Add replies with the new total");
                        let previous = last.insert(pid, total).unwrap_or(0);
                        assert!(total > previous, "{pid} went back from {previous} to {total}");
                        *ok.entry(pid).or_default() += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    ok
                })
            })
            .collect();
        eventually("calls are flowing", || done.load(Ordering::Relaxed) > 200);
        for round in 0..3 {
            let report = controller.apply(&to_v2(), &Options::default()).unwrap();
            assert!(report.committed(), "round {round}: {report}");
            assert_eq!(report.messages_lost, 0, "{report}");
            let seen = done.load(Ordering::Relaxed);
            eventually("calls are handled on 2.0.0", || done.load(Ordering::Relaxed) > seen + 100);
            let back = controller.rollback(&Options::default()).unwrap();
            assert!(back.rollback.as_ref().unwrap().complete(), "round {round}: {back}");
            let seen = done.load(Ordering::Relaxed);
            eventually("calls are handled on 1.0.0", || done.load(Ordering::Relaxed) > seen + 100);
        }
        stop.store(true, Ordering::Relaxed);
        callers.into_iter().map(|c| c.join().unwrap()).collect()
    });

    for pid in &pids {
        let calls: u64 = per_thread.iter().map(|ok| ok.get(pid).copied().unwrap_or(0)).sum();
        assert!(calls > 0);
        assert_eq!(count_of(&node, *pid), calls, "{pid}: every successful call counted exactly once");
        assert_eq!(version_of(&node, *pid), "1.0.0");
    }
    assert_eq!(current_version(&code, "counter").as_deref(), Some("1.0.0"));
    node.shutdown();
}

// ---- 6. up and down the version path, with purges --------------------------

#[test]
fn up_to_3_and_down_to_1_through_plans_and_rollbacks() {
    let (node, _dir, controller) = node_on_v1();
    let code = node.code_server().unwrap();
    let pids = spawn_counters(&node, 10);
    let counts: Vec<u64> = (1..=10).collect();
    let options = Options::default();

    controller.apply(&to_v2(), &options).unwrap();
    assert_all_on(&node, &pids, "2.0.0", &counts);
    assert_eq!(versions(&code, "counter"), (v("2.0.0", 10), v("1.0.0", 0)));

    controller.apply(&to_v3(), &options).unwrap();
    assert_all_on(&node, &pids, "3.0.0", &counts);
    assert_eq!(call(&node, pids[0], json!("Note")), json!("upgraded"));
    // Two versions at most: loading 3.0.0 dropped 1.0.0, which nobody ran.
    assert_eq!(versions(&code, "counter"), (v("3.0.0", 10), v("2.0.0", 0)));

    // An explicit rollback undoes the last upgrade only.
    let back = controller.rollback(&options).unwrap();
    let rollback = back.rollback.as_ref().unwrap();
    assert!(rollback.complete(), "{back}");
    assert_eq!(rollback.downgraded, 10, "{back}");
    assert_eq!(rollback.unloaded, vec!["counter 3.0.0".to_string()]);
    assert_all_on(&node, &pids, "2.0.0", &counts);
    assert_eq!(versions(&code, "counter"), (v("2.0.0", 10), None));
    assert!(matches!(controller.rollback(&options), Err(UpgradeError::NothingToRollBack)));

    // Down to 1.0.0 is a plan of its own: 2.0.0 downgrades its state.
    let down = Plan::new(
        "counter → 1.0.0",
        vec![load("counter-v1"), update("counter", Processes::All, Value::Null)],
    );
    let report = controller.apply(&down, &options).unwrap();
    assert!(report.committed(), "{report}");
    assert_eq!(report.moved, 10);
    assert_all_on(&node, &pids, "1.0.0", &counts);
    assert_eq!(versions(&code, "counter"), (v("1.0.0", 10), v("2.0.0", 0)));

    // 3.0.0 upgrades from 2.x only: straight from 1.0.0 it is refused,
    // with the module's reason, and nothing changes.
    let (failure, report) = aborted(controller.apply(&to_v3(), &options));
    assert!(pids.contains(&failure.pid.expect("a process failed")), "{failure}");
    assert_eq!(failure.module.as_deref(), Some("counter"));
    assert!(failure.error.contains("upgrades from 2.x only"), "{failure}");
    assert!(report.rollback.as_ref().unwrap().complete(), "{report}");
    assert_all_on(&node, &pids, "1.0.0", &counts);
    assert_eq!(current_version(&code, "counter").as_deref(), Some("1.0.0"));
    let (current, old) = versions(&code, "counter");
    assert_eq!(current, v("1.0.0", 10));
    assert_eq!(old.map_or(0, |(_, n)| n), 0);

    // The right way up: 2.0.0 then 3.0.0, whose plan purges 2.0.0.
    controller.apply(&to_v2(), &options).unwrap();
    let mut up = to_v3();
    up.instructions.push(purge(PurgeMode::Soft));
    let report = controller.apply(&up, &options).unwrap();
    assert!(report.committed(), "{report}");
    assert!(
        report.steps.iter().any(|s| s.step.contains("soft_purge counter: removed Some(\"2.0.0\")")),
        "{report:?}"
    );
    assert_all_on(&node, &pids, "3.0.0", &counts);
    assert_eq!(versions(&code, "counter"), (v("3.0.0", 10), None), "only 3.0.0 is left");
    // A purge cannot be undone: the rollback is refused and changes nothing.
    let (failure, _) = aborted(controller.rollback(&options));
    assert!(failure.error.contains("purged"), "{failure}");
    assert_all_on(&node, &pids, "3.0.0", &counts);
    assert_eq!(versions(&code, "counter"), (v("3.0.0", 10), None));
    node.shutdown();
}

#[test]
fn soft_and_brutal_purges_of_the_old_version() {
    let (node, _dir, controller) = node_on_v1();
    let code = node.code_server().unwrap();
    let pids = spawn_counters(&node, 10);
    let counts: Vec<u64> = (1..=10).collect();
    let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    for (pid, name) in pids.iter().zip(&names) {
        node.register(name, *pid).unwrap();
    }
    let (first, second) = pids.split_at(5);
    let options = Options::default();
    controller.apply(&to_v2(), &options).unwrap();

    // Half move to 3.0.0; a soft purge then cannot remove 2.0.0, which the
    // other half still runs: it is refused at commit and both stay.
    let half = Plan::new(
        "half → 3.0.0",
        vec![
            load("counter-v3"),
            update("counter", Processes::Named(names[..5].to_vec()), json!({"note": "half"})),
            purge(PurgeMode::Soft),
        ],
    );
    let report = controller.apply(&half, &options).unwrap();
    assert!(report.committed(), "{report}");
    assert_eq!(report.moved, 5, "{report}");
    assert!(report.steps.iter().any(|s| s.step.contains("soft_purge counter refused")), "{report:?}");
    assert_all_on(&node, first, "3.0.0", &counts[..5]);
    assert_all_on(&node, second, "2.0.0", &counts[5..]);
    assert_eq!(versions(&code, "counter"), (v("3.0.0", 5), v("2.0.0", 5)));

    // The rest move; now the soft purge removes 2.0.0.
    let rest = Plan::new(
        "rest → 3.0.0",
        vec![update("counter", Processes::All, json!({"note": "rest"})), purge(PurgeMode::Soft)],
    );
    let report = controller.apply(&rest, &options).unwrap();
    assert_eq!(report.moved, 5, "{report}");
    assert_all_on(&node, &pids, "3.0.0", &counts);
    assert_eq!(versions(&code, "counter"), (v("3.0.0", 10), None));

    // Back to 2.0.0 for the first half only, with a brutal purge: the
    // second half, still on 3.0.0, is killed.
    let brutal = Plan::new(
        "first half → 2.0.0, brutally",
        vec![
            load("counter-v2"),
            update("counter", Processes::Named(names[..5].to_vec()), Value::Null),
            purge(PurgeMode::Brutal),
        ],
    );
    let report = controller.apply(&brutal, &options).unwrap();
    assert!(report.committed(), "{report}");
    assert!(report.steps.iter().any(|s| s.step.contains("brutal_purge counter: killed 5")), "{report:?}");
    assert_all_on(&node, first, "2.0.0", &counts[..5]);
    for pid in second {
        assert!(!node.is_alive(*pid), "{pid} ran purged code and was killed");
    }
    eventually("3.0.0 is gone", || versions(&code, "counter") == (v("2.0.0", 5), None));
    let (failure, _) = aborted(controller.rollback(&options));
    assert!(failure.error.contains("purged"), "{failure}");
    assert_all_on(&node, first, "2.0.0", &counts[..5]);
    node.shutdown();
}

#[test]
fn a_rollback_after_an_aborted_upgrade_leaves_every_process_on_loaded_code() {
    let (node, _dir, controller) = node_on_v1();
    let code = node.code_server().unwrap();
    let pids = spawn_counters(&node, 5);
    let counts: Vec<u64> = (1..=5).collect();
    let options = Options::default();
    controller.apply(&to_v2(), &options).unwrap();
    let down = Plan::new(
        "counter → 1.0.0",
        vec![load("counter-v1"), update("counter", Processes::All, Value::Null)],
    );
    controller.apply(&down, &options).unwrap();
    assert_eq!(versions(&code, "counter"), (v("1.0.0", 5), v("2.0.0", 0)));
    // This one fails, and its load of 3.0.0 dropped 2.0.0 (nobody ran it).
    aborted(controller.apply(&to_v3(), &options));
    assert_all_on(&node, &pids, "1.0.0", &counts);

    // Rolling back "→ 1.0.0" needs 2.0.0, which the code server dropped:
    // the rollback holds it still and makes it current again, so no process
    // ends up on code the code server does not know.
    let report = controller.rollback(&options).expect("the rollback brings 2.0.0 back");
    assert!(report.rollback.as_ref().unwrap().complete(), "{report}");
    let (current, old) = versions(&code, "counter");
    let known = current.as_ref().map_or(0, |c| c.1) + old.as_ref().map_or(0, |o| o.1);
    assert_eq!(known, 5, "every process runs a loaded version: {current:?} {old:?}");
    assert_all_on(&node, &pids, "2.0.0", &counts);
    assert_eq!(current_version(&code, "counter").as_deref(), Some("2.0.0"));
    // And the node can still be upgraded.
    let report = controller.apply(&to_v2(), &options).unwrap();
    assert!(report.committed(), "{report}");
    assert_all_on(&node, &pids, "2.0.0", &counts);
    node.shutdown();
}

// ---- 7. processes that do not reach their migration in time ---------------

#[test]
fn a_process_that_cannot_reach_its_migration_aborts_the_upgrade_naming_it() {
    let (node, _dir, controller) = node_on_v1();
    let code = node.code_server().unwrap();
    let pids = spawn_counters(&node, 20);
    let counts: Vec<u64> = (1..=20).collect();
    let stuck = pids[7];
    node.suspend(stuck, T).unwrap();
    node.cast_json(stuck, &json!({"Add": 1000})).unwrap();
    let options = Options { suspend_timeout: Duration::from_millis(500), ..Options::default() };

    // Should the controller wait for it regardless, the process is let go
    // after a while, so the test fails instead of hanging.
    let (finished, wait) = std::sync::mpsc::channel::<()>();
    let result = std::thread::scope(|s| {
        let node = &node;
        s.spawn(move || {
            if wait.recv_timeout(T).is_err() {
                let _ = node.resume(stuck);
            }
        });
        let result = controller.apply(&to_v2(), &options);
        finished.send(()).unwrap();
        result
    });
    let (failure, report) = aborted(result);
    assert_eq!(failure.pid, Some(stuck), "{failure}");
    assert_eq!(failure.module.as_deref(), Some("counter"));
    assert!(failure.error.contains("did not reach its migration"), "{failure}");
    assert!(report.rollback.as_ref().unwrap().complete(), "{report}");
    assert_eq!(report.moved, 19, "{report}");

    // The node runs on; once the stuck process goes on, its abandoned
    // migration never runs, and it handles what was queued meanwhile.
    node.resume(stuck).unwrap();
    let mut expected = counts.clone();
    expected[7] += 1000;
    assert_all_on(&node, &pids, "1.0.0", &expected);
    assert_eq!(versions(&code, "counter"), (v("1.0.0", 20), None));
    let late = spawn_counter(&node, "late", 0);
    assert_eq!(version_of(&node, late), "1.0.0");
    let report = controller.apply(&to_v2(), &Options::default()).unwrap();
    assert_eq!(report.moved, 21, "{report}");
    node.shutdown();
}

#[test]
fn a_process_behind_a_long_queue_times_out_and_loses_nothing() {
    let (node, _dir, controller) = node_on_v1();
    let pids = spawn_counters(&node, 10);
    let names: Vec<String> = (0..10).map(|i| format!("q{i}")).collect();
    for (pid, name) in pids.iter().zip(&names) {
        node.register(name, *pid).unwrap();
    }
    // q0 gets a long queue; it is held until its migration is queued behind
    // it, then let go: it is busy with its queue long past the timeout.
    let flooded = pids[0];
    let flood = 100_000u64;
    node.suspend(flooded, T).unwrap();
    let one = payload(json!({"Add": 1}));
    for _ in 0..flood {
        node.cast(flooded, one.clone()).unwrap();
    }
    let before = node.mailbox_counts(flooded).unwrap().system;
    let options = Options { suspend_timeout: Duration::from_millis(5), ..Options::default() };
    // q0 first: the failure reported is that of the first process listed.
    let plan = Plan::new(
        "counter → 2.0.0",
        vec![load("counter-v2"), update("counter", Processes::Named(names.clone()), Value::Null)],
    );
    let result = std::thread::scope(|s| {
        s.spawn(|| when_task_queued(&node, flooded, before, || node.resume(flooded).unwrap()));
        controller.apply(&plan, &options)
    });
    let (failure, report) = aborted(result);
    assert_eq!(failure.pid, Some(flooded), "{failure}");
    assert!(failure.error.contains("did not reach its migration"), "{failure}");
    assert!(report.rollback.as_ref().unwrap().complete(), "{report}");
    assert_eq!(report.messages_lost, 0, "{report}");

    let mut expected: Vec<u64> = (1..=10).collect();
    expected[0] += flood;
    assert_all_on(&node, &pids, "1.0.0", &expected);
    let code = node.code_server().unwrap();
    assert_eq!(versions(&code, "counter"), (v("1.0.0", 10), None));
    node.shutdown();
}

// ---- 8. no message lost ---------------------------------------------------

#[test]
fn casts_sent_during_upgrades_are_all_handled() {
    let (node, _dir, controller) = node_on_v1();
    let pids: Vec<Pid> = (0..100).map(|i| spawn_counter(&node, &format!("c{i}"), 0)).collect();
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);

    let reports = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            let add = payload(json!({"Add": 1}));
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                node.cast(pids[i % pids.len()], add.clone()).unwrap();
                sent.fetch_add(1, Ordering::Relaxed);
                i += 1;
                if i % 64 == 0 {
                    std::thread::yield_now();
                }
            }
        });
        eventually("casts are flowing", || sent.load(Ordering::Relaxed) > 1000);
        let mut reports = vec![controller.apply(&to_v2(), &Options::default()).unwrap()];
        reports.push(controller.apply(&to_v3(), &Options::default()).unwrap());
        stop.store(true, Ordering::Relaxed);
        sender.join().unwrap();
        reports
    });

    for report in &reports {
        assert!(report.committed(), "{report}");
        assert_eq!(report.moved, 100, "{report}");
        assert_eq!(report.messages_lost, 0, "{report}");
    }
    let total: u64 = pids.iter().map(|p| count_of(&node, *p)).sum();
    assert_eq!(total, sent.load(Ordering::Relaxed), "every cast was handled exactly once");
    for pid in &pids {
        assert_eq!(version_of(&node, *pid), "3.0.0");
    }
    node.shutdown();
}
