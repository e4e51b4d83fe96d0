//! Application configuration across upgrades, on the abi3 probe (whose
//! `config_change` logs what it saw, and refuses when told to): a release
//! that changes `[config]` sets it on the node and every running module
//! process hears of it inside the upgrade; a refusal aborts the upgrade
//! like a failed `code_change`, naming the process; a rollback sets the old
//! configuration again and tells the processes.

#[path = "../../runtime/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use relive_runtime::{Node, Pid};
use relive_upgrader::planner::{self, Planned};
use relive_upgrader::{
    ChildDef, Controller, Flags, Instruction, ModuleView, Options, Plan, ProcessDef, ReleaseView, Restart,
    Shutdown, Strategy, SupervisorDef, UpgradeError,
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(10);

fn probe(id: &str) -> ChildDef {
    ChildDef::Process(ProcessDef {
        id: id.into(),
        module: "abi3-probe".into(),
        args: Value::Null,
        restart: Restart::Permanent,
        shutdown: Shutdown::default(),
    })
}

fn release(version: &str, config: Value) -> ReleaseView {
    ReleaseView {
        name: "app".into(),
        version: version.parse().unwrap(),
        upgrade_from: Some("^1".parse().unwrap()),
        modules: vec![ModuleView {
            name: "abi3-probe".into(),
            sha256: "p1".into(),
            library: support::library("abi3-probe-v1"),
        }],
        tree: SupervisorDef {
            id: planner::supervisor_name("app"),
            flags: Flags { strategy: Strategy::OneForOne, ..Flags::default() },
            restart: Restart::Permanent,
            shutdown: Shutdown::Infinity,
            children: vec![probe("a"), probe("b")],
        },
        config,
        instructions: Vec::new(),
    }
}

/// A node running `view` with its configuration set, as the node's boot
/// does.
fn boot(view: &ReleaseView) -> (Node, tempfile::TempDir, Controller) {
    let (node, dir) = support::node_with_code();
    let code = node.code_server().unwrap();
    code.load(&view.modules[0].library).unwrap();
    node.set_config(support::payload(view.config.clone()));
    relive_upgrader::tree::start(&node, &code, &view.tree).unwrap();
    let controller = Controller::new(&node).unwrap();
    (node, dir, controller)
}

fn plan(from: &ReleaseView, to: &ReleaseView) -> Plan {
    let Planned::Upgrade { plan, .. } = planner::plan(from, to).unwrap() else {
        panic!("expected a live upgrade")
    };
    plan
}

fn call(node: &Node, name: &str, request: Value) -> Value {
    let pid = node.whereis(name).unwrap();
    node.call_json(pid, &request, T).unwrap_or_else(|e| panic!("{request} to {name}: {e}"))
}

/// The (old, new) greetings of each configuration change `name` saw.
fn changes(node: &Node, name: &str) -> Vec<(String, String)> {
    let events = call(node, name, json!("Events"));
    events["Events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.get("Config"))
        .map(|c| {
            assert_eq!(c["read"], c["new"], "Ctx::config reads the new configuration in the callback");
            (
                c["old"]["greeting"].as_str().unwrap().to_string(),
                c["new"]["greeting"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn node_greeting(node: &Node) -> String {
    let config = relive_runtime::module::payload_to_json(&node.config()).unwrap();
    config["greeting"].as_str().unwrap_or("").to_string()
}

fn pair(old: &str, new: &str) -> (String, String) {
    (old.to_string(), new.to_string())
}

#[test]
fn a_changed_config_reaches_every_process_and_a_rollback_takes_it_back() {
    let one = release("1.0.0", json!({"greeting": "hi", "limit": 1}));
    let two = release("1.1.0", json!({"greeting": "hello", "limit": 2}));
    let (node, _dir, controller) = boot(&one);
    let plan = plan(&one, &two);
    assert!(
        matches!(plan.instructions.as_slice(), [Instruction::ChangeConfig { config }] if config == &two.config),
        "{plan}"
    );
    // The same release again has nothing to change.
    assert!(self::plan(&one, &release("1.0.1", one.config.clone())).instructions.is_empty());

    controller.apply(&plan, &Options::default()).unwrap();
    assert_eq!(node_greeting(&node), "hello");
    for name in ["a", "b"] {
        assert_eq!(changes(&node, name), [pair("hi", "hello")], "{name}");
        assert_eq!(call(&node, name, json!("Config"))["Config"]["Ok"]["limit"], 2);
    }

    let report = controller.rollback(&Options::default()).unwrap();
    assert!(report.rollback.as_ref().unwrap().errors.is_empty(), "{report:?}");
    assert_eq!(node_greeting(&node), "hi");
    for name in ["a", "b"] {
        assert_eq!(changes(&node, name), [pair("hi", "hello"), pair("hello", "hi")], "{name}");
    }
    node.shutdown();
}

#[test]
fn a_refused_config_change_aborts_the_upgrade_and_names_the_process() {
    let one = release("1.0.0", json!({"greeting": "hi"}));
    let two = release("1.1.0", json!({"greeting": "hello"}));
    let (node, _dir, controller) = boot(&one);
    let b: Pid = node.whereis("b").unwrap();
    for (how, expected) in [("not today", "not today"), ("panic", "panics on a configuration change")] {
        call(&node, "b", json!({ "RefuseConfig": how }));
        let error = controller.apply(&plan(&one, &two), &Options::default()).unwrap_err();
        let UpgradeError::Aborted { failure, report } = &error else {
            panic!("expected an abort, got {error}")
        };
        assert_eq!((failure.pid, failure.name.as_deref()), (Some(b), Some("b")), "{error}");
        assert_eq!(failure.module.as_deref(), Some("abi3-probe"), "{error}");
        assert!(failure.error.contains(expected), "{error}");
        assert!(report.rollback.as_ref().unwrap().errors.is_empty(), "{report:?}");
        // Everything as before: the old configuration, b never took the new
        // one, and a, which took it, heard of the old one again.
        assert_eq!(node_greeting(&node), "hi");
        assert!(changes(&node, "b").is_empty());
        assert_eq!(node.whereis("b"), Some(b), "a refusal does not stop the process");
    }
    assert_eq!(
        changes(&node, "a"),
        [pair("hi", "hello"), pair("hello", "hi"), pair("hi", "hello"), pair("hello", "hi")]
    );
    // Once b accepts, the same upgrade goes through.
    call(&node, "b", json!({ "RefuseConfig": null }));
    controller.apply(&plan(&one, &two), &Options::default()).unwrap();
    assert_eq!(changes(&node, "b"), [pair("hi", "hello")]);
    node.shutdown();
}
