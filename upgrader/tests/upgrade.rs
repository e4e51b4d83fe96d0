//! The controller end to end on the counter example: a plan moves every
//! process from 1.0.0 to 2.0.0 while casts keep arriving, nothing is lost,
//! and an explicit rollback brings them back.

#[path = "../../runtime/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use relive_runtime::{Node, Pid};
use relive_upgrader::{
    Controller, Instruction, Options, Phase, PhaseHook, Plan, Processes, ReleaseId, ReleaseStep,
};
use serde_json::{Value, json};
use support::{node_with_code, payload};

const T: Duration = Duration::from_secs(5);

fn spawn_counters(node: &Node, n: usize) -> Vec<Pid> {
    (0..n)
        .map(|i| node.spawn_module("counter", payload(json!({"label": format!("c{i}")})), T).unwrap())
        .collect()
}

fn call(node: &Node, pid: Pid, request: Value) -> Value {
    node.call_json(pid, &request, T).unwrap()
}

fn upgrade_plan(library: &str) -> Plan {
    Plan::new(
        format!("counter → {library}"),
        vec![
            Instruction::LoadModule { module: "counter".into(), path: support::library(library) },
            Instruction::Update {
                module: "counter".into(),
                processes: Processes::All,
                extra: json!({"default_label": "unnamed"}),
                suspend_together: false,
            },
        ],
    )
}

#[test]
fn every_process_moves_to_the_new_version_with_its_state_and_back_on_rollback() {
    let (node, _dir) = node_with_code();
    let code = node.code_server().unwrap();
    code.load(&support::library("counter-v1")).unwrap();
    let pids = spawn_counters(&node, 50);
    for (i, pid) in pids.iter().enumerate() {
        node.cast_json(*pid, &json!({"Add": i})).unwrap();
    }
    let controller = Controller::new(&node).unwrap();
    assert_eq!(controller.undo_target(), None, "nothing applied yet");
    let id = |version: &str| ReleaseId { name: "counter".into(), version: version.parse().unwrap() };
    let plan = Plan {
        releases: Some(ReleaseStep { from: id("1.0.0"), to: id("2.0.0") }),
        ..upgrade_plan("counter-v2")
    };
    let report = controller.apply(&plan, &Options::default()).unwrap();
    assert!(report.committed(), "{report}");
    assert_eq!(
        controller.undo_target().map(|step| step.from),
        Some(id("1.0.0")),
        "the undo knows where it returns"
    );
    assert_eq!(report.moved, 50, "{report}");
    assert_eq!(report.pause.count, 50);
    assert_eq!(report.messages_lost, 0);
    for (i, pid) in pids.iter().enumerate() {
        assert_eq!(call(&node, *pid, json!("Version")), json!("2.0.0"));
        assert_eq!(call(&node, *pid, json!("Get")), json!(i), "{pid} kept its count");
    }
    assert!(code.old("counter").unwrap().processes().is_empty());

    for pid in &pids {
        node.cast_json(*pid, &json!({"Add": 1})).unwrap();
    }
    let back = controller.rollback(&Options::default()).unwrap();
    assert_eq!(controller.undo_target(), None, "a rollback consumes the undo");
    let rollback = back.rollback.as_ref().unwrap();
    assert!(rollback.complete(), "{back}");
    assert_eq!(rollback.downgraded, 50, "{back}");
    assert_eq!((back.moved, back.pause.count), (50, 50), "the rollback's own moves: {back}");
    assert_eq!(rollback.unloaded, vec!["counter 2.0.0".to_string()]);
    for (i, pid) in pids.iter().enumerate() {
        assert_eq!(call(&node, *pid, json!("Version")), json!("1.0.0"));
        assert_eq!(call(&node, *pid, json!("Get")), json!(i + 1));
    }
    assert_eq!(code.current("counter").unwrap().version().to_string(), "1.0.0");
    node.shutdown();
}

#[test]
fn the_phase_hook_sees_each_phase_in_order_and_each_process_move() {
    let (node, _dir) = node_with_code();
    node.code_server().unwrap().load(&support::library("counter-v1")).unwrap();
    let pids = spawn_counters(&node, 4);
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let hook = {
        let seen = std::sync::Arc::clone(&seen);
        PhaseHook::new(move |phase| seen.lock().push(phase))
    };
    let options = Options { on_phase: Some(hook), ..Options::default() };
    let controller = Controller::new(&node).unwrap();
    let report = controller.apply(&upgrade_plan("counter-v2"), &options).unwrap();
    assert!(report.committed(), "{report}");
    let seen = seen.lock().clone();
    let count = |phase| seen.iter().filter(|p| **p == phase).count();
    assert_eq!((count(Phase::Suspended), count(Phase::Migrated)), (pids.len(), pids.len()), "{seen:?}");
    assert_eq!(seen.first(), Some(&Phase::Prepared), "{seen:?}");
    assert_eq!(&seen[seen.len() - 2..], &[Phase::Switched, Phase::Committed], "{seen:?}");
    // Each process's migration ran after its suspension.
    let first_migrated = seen.iter().position(|p| *p == Phase::Migrated).unwrap();
    assert!(seen[..first_migrated].contains(&Phase::Suspended), "{seen:?}");
    node.shutdown();
}
