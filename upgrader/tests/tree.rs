//! Supervision trees across upgrades, on the counter example: a release's
//! tree is booted with `tree::start`, the planner diffs two trees, and the
//! controller applies and rolls back the plan. Changed child specs and
//! supervisor flags take effect at the next restart, never by restarting
//! what runs; subtrees start and stop whole; a rollback puts everything
//! back.

#[path = "../../runtime/tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use relive_runtime::supervisor;
use relive_runtime::{Node, Pid};
use relive_upgrader::planner::{self, Planned};
use relive_upgrader::{
    ChildDef, Controller, Flags, ModuleView, Options, ProcessDef, ReleaseView, Restart, Shutdown, Strategy,
    SupervisorDef,
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(10);

fn counter(id: &str, restart: Restart, args: Value) -> ChildDef {
    ChildDef::Process(ProcessDef {
        id: id.into(),
        module: "counter".into(),
        args,
        restart,
        shutdown: Shutdown::default(),
    })
}

fn sup(id: &str, strategy: Strategy, children: Vec<ChildDef>) -> SupervisorDef {
    SupervisorDef {
        id: id.into(),
        flags: Flags { strategy, ..Flags::default() },
        restart: Restart::Permanent,
        shutdown: Shutdown::Infinity,
        children,
    }
}

fn release(version: &str, children: Vec<ChildDef>) -> ReleaseView {
    let library = support::library("counter-v1");
    ReleaseView {
        name: "app".into(),
        version: version.parse().unwrap(),
        upgrade_from: Some("^1".parse().unwrap()),
        modules: vec![ModuleView { name: "counter".into(), sha256: "c1".into(), library }],
        tree: sup(&planner::supervisor_name("app"), Strategy::OneForOne, children),
        config: Value::Null,
        instructions: Vec::new(),
    }
}

/// A node running release `view`'s tree, and its controller.
fn boot(view: &ReleaseView) -> (Node, tempfile::TempDir, Controller) {
    let (node, dir) = support::node_with_code();
    let code = node.code_server().unwrap();
    code.load(&view.modules[0].library).unwrap();
    relive_upgrader::tree::start(&node, &code, &view.tree).unwrap();
    let controller = Controller::new(&node).unwrap();
    (node, dir, controller)
}

fn upgrade(controller: &Controller, from: &ReleaseView, to: &ReleaseView) {
    let Planned::Upgrade { plan, .. } = planner::plan(from, to).unwrap() else {
        panic!("expected a live upgrade")
    };
    controller.apply(&plan, &Options::default()).unwrap_or_else(|e| panic!("{plan}: {e}"));
}

fn whereis(node: &Node, name: &str) -> Pid {
    node.whereis(name).unwrap_or_else(|| panic!("nothing registered as {name}"))
}

/// The label a counter was started with (its state).
fn label(node: &Node, name: &str) -> String {
    let state = node.call_json(whereis(node, name), &json!("State"), T).unwrap();
    state["label"].as_str().unwrap().to_string()
}

/// Waits until `name` is registered to a process other than `old`.
fn restarted(node: &Node, name: &str, old: Pid) -> Pid {
    let deadline = Instant::now() + T;
    loop {
        match node.whereis(name) {
            Some(pid) if pid != old => return pid,
            _ => assert!(Instant::now() < deadline, "{name} was not restarted"),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Ends `name` cleanly (reason normal) and waits until it is gone.
fn stop_normally(node: &Node, name: &str) -> Pid {
    let pid = whereis(node, name);
    let exited = node.exit_waiter(pid);
    node.cast_json(pid, &json!({"Stop": "normal"})).unwrap();
    assert!(exited.wait(T).is_some(), "{name} did not stop");
    pid
}

/// Crashes `name` (a panic) and waits until it is gone.
fn crash(node: &Node, name: &str) -> Pid {
    let pid = whereis(node, name);
    let exited = node.exit_waiter(pid);
    assert!(node.call_json(pid, &json!("Crash"), T).is_err());
    assert!(exited.wait(T).is_some(), "{name} did not crash");
    pid
}

#[test]
fn changed_child_specs_apply_at_the_next_restart_and_a_rollback_restores_them() {
    let one = release(
        "1.0.0",
        vec![
            counter("c", Restart::Transient, json!({"label": "one"})),
            counter("d", Restart::Permanent, json!({"label": "d"})),
        ],
    );
    let mut two = release(
        "1.1.0",
        vec![
            counter("c", Restart::Permanent, json!({"label": "two"})),
            counter("d", Restart::Permanent, json!({"label": "d"})),
        ],
    );
    two.tree.flags = Flags { strategy: Strategy::OneForOne, intensity: 7, period_ms: 3000 };
    let (node, _dir, controller) = boot(&one);
    let top = planner::supervisor_name("app");
    let (c, d) = (whereis(&node, "c"), whereis(&node, "d"));

    upgrade(&controller, &one, &two);
    // Nothing restarted: the same processes, started with the old args.
    assert_eq!((whereis(&node, "c"), whereis(&node, "d")), (c, d));
    assert_eq!(label(&node, "c"), "one");
    let flags = supervisor::flags(&node, top.as_str(), T).unwrap();
    assert_eq!((flags.intensity, flags.period), (7, Duration::from_millis(3000)));
    // Permanent now: even a clean exit brings it back, with the new args.
    let gone = stop_normally(&node, "c");
    restarted(&node, "c", gone);
    assert_eq!(label(&node, "c"), "two");
    assert_eq!(whereis(&node, "d"), d, "its sibling untouched");

    let report = controller.rollback(&Options::default()).unwrap();
    assert!(report.rollback.as_ref().unwrap().errors.is_empty(), "{report:?}");
    let flags = supervisor::flags(&node, top.as_str(), T).unwrap();
    assert_eq!((flags.intensity, flags.period), (5, Duration::from_secs(10)), "the old flags");
    // The rollback restarted nothing either: c still runs the new args.
    assert_eq!(label(&node, "c"), "two");
    // Transient again, with the old args: a crash restarts it ...
    let gone = crash(&node, "c");
    restarted(&node, "c", gone);
    assert_eq!(label(&node, "c"), "one");
    // ... a clean exit does not.
    stop_normally(&node, "c");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(node.whereis("c"), None, "a transient child that ended cleanly stays down");
    node.shutdown();
}

#[test]
fn an_upgrade_starts_and_stops_whole_subtrees_and_a_rollback_reverses_it() {
    let one = release(
        "1.0.0",
        vec![
            counter("c", Restart::Permanent, json!({"label": "c"})),
            ChildDef::Supervisor(sup(
                "old_pool",
                Strategy::OneForAll,
                vec![
                    counter("p1", Restart::Permanent, json!({})),
                    counter("p2", Restart::Permanent, json!({})),
                ],
            )),
        ],
    );
    let two = release(
        "2.0.0",
        vec![
            counter("c", Restart::Permanent, json!({"label": "c"})),
            ChildDef::Supervisor(sup(
                "rooms",
                Strategy::SimpleOneForOne,
                vec![counter("room", Restart::Temporary, json!({"label": "room", "count": 1}))],
            )),
            ChildDef::Supervisor(sup(
                "pool",
                Strategy::RestForOne,
                vec![
                    counter("q1", Restart::Permanent, json!({})),
                    ChildDef::Supervisor(sup(
                        "inner",
                        Strategy::OneForOne,
                        vec![counter("q2", Restart::Permanent, json!({}))],
                    )),
                ],
            )),
        ],
    );
    let (node, _dir, controller) = boot(&one);
    let c = whereis(&node, "c");
    let old: Vec<Pid> = ["old_pool", "p1", "p2"].iter().map(|n| whereis(&node, n)).collect();

    upgrade(&controller, &one, &two);
    for (name, pid) in ["old_pool", "p1", "p2"].iter().zip(&old) {
        assert_eq!(node.whereis(name), None, "{name} stopped with its subtree");
        assert!(!node.is_alive(*pid), "{name}");
    }
    for name in ["rooms", "pool", "q1", "inner", "q2"] {
        assert!(node.whereis(name).is_some(), "{name} started with its subtree");
    }
    assert_eq!(whereis(&node, "c"), c, "the child in both releases runs on");
    let pool: Vec<String> = supervisor::which_children(&node, "pool", T)
        .unwrap()
        .into_iter()
        .map(|child| child.id.to_string())
        .collect();
    assert_eq!(pool, ["q1", "inner"], "in the release's order");
    // The new simple_one_for_one supervisor starts children from their
    // arguments over the template's (a module does the same call).
    let started = node.call_json("rooms", &json!({"start_child": {"count": 5}}), T).unwrap();
    let room = Pid::from_u64(started["pid"].as_u64().unwrap()).unwrap();
    let state = node.call_json(room, &json!("State"), T).unwrap();
    assert_eq!((state["label"].as_str(), state["count"].as_u64()), (Some("room"), Some(5)));

    let report = controller.rollback(&Options::default()).unwrap();
    assert!(report.rollback.as_ref().unwrap().errors.is_empty(), "{report:?}");
    for name in ["rooms", "pool", "q1", "inner", "q2"] {
        assert_eq!(node.whereis(name), None, "{name} went with the rollback");
    }
    assert!(!node.is_alive(room), "the dynamic child went with its supervisor");
    for name in ["old_pool", "p1", "p2"] {
        assert!(node.whereis(name).is_some(), "{name} came back");
    }
    let pool: Vec<String> = supervisor::which_children(&node, "old_pool", T)
        .unwrap()
        .into_iter()
        .map(|child| child.id.to_string())
        .collect();
    assert_eq!(pool, ["p1", "p2"]);
    assert_eq!(whereis(&node, "c"), c);
    node.shutdown();
}
