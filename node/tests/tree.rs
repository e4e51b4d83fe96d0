//! A release's supervision tree and configuration through the release
//! handler, in process: examples/releases/tree-1.0.0 boots its nested
//! tree with its `[config]`; its lobby (a module) starts rooms under a
//! simple_one_for_one supervisor by calling it; tree-2.0.0 changes child
//! specs (in place: nothing running restarts), supervisor flags, the
//! configuration (every module process hears of it), removes one subtree
//! and adds another; the rollback undoes all of it; a configuration that a
//! process refuses aborts the deploy and names the process.

#[path = "../../runtime/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use relive_node::protocol::{DeployOptions, MessageRequest, Request, Response, Status};
use relive_node::{Config, ReleaseHandler};
use relive_releases::archive;
use relive_releases::manifest::Manifest;
use relive_runtime::Pid;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(10);

/// Builds examples/releases/tree-`version` (its text changed by `edit`)
/// into an archive in `dir`, with the example libraries the tests build.
fn archive_of(version: &str, dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let source = support::workspace().join("examples/releases").join(format!("tree-{version}/release.toml"));
    let text = edit(std::fs::read_to_string(&source).unwrap());
    let manifest = Manifest::parse(&text, &source).unwrap();
    let libraries = [
        ("counter".to_string(), support::library("counter-v1")),
        ("lobby".to_string(), support::library("lobby")),
    ];
    archive::build(&manifest, dir, &libraries, &dir.join("archives"), None).unwrap()
}

/// Stops the node even when the test fails.
struct Running(ReleaseHandler);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.stop();
    }
}

fn status(handler: &ReleaseHandler) -> Status {
    handler.status()
}

fn call(handler: &ReleaseHandler, name: &str, message: Value) -> Value {
    let request = Request::Call(MessageRequest { name: name.into(), message: message.clone() });
    match handler.handle(request, &mut |_| {}) {
        Ok(Response::Reply(reply)) => reply,
        other => panic!("call {message} to {name}: {other:?}"),
    }
}

fn state(handler: &ReleaseHandler, pid: Pid) -> Value {
    handler.node().call_json(pid, &json!("State"), T).unwrap()
}

fn deploy(handler: &ReleaseHandler, archive: &Path) -> Result<Response, relive_node::protocol::Failure> {
    let verified = handler.verify_archive(archive)?;
    handler.deploy(verified, DeployOptions::default(), &mut |_| {})
}

/// `(name, parent, strategy, intensity, running children)` per supervisor.
fn supervisors(status: &Status) -> Vec<(String, Option<String>, String, u32, usize)> {
    status
        .supervisors
        .iter()
        .map(|s| (s.name.clone(), s.parent.clone(), s.strategy.clone(), s.intensity, s.running))
        .collect()
}

fn sup(
    name: &str,
    parent: Option<&str>,
    strategy: &str,
    intensity: u32,
    running: usize,
) -> (String, Option<String>, String, u32, usize) {
    (name.into(), parent.map(str::to_string), strategy.into(), intensity, running)
}

fn wait_restarted(handler: &ReleaseHandler, name: &str, old: Pid) -> Pid {
    let deadline = Instant::now() + T;
    loop {
        match handler.node().whereis(name) {
            Some(pid) if pid != old => return pid,
            _ => assert!(Instant::now() < deadline, "{name} was not restarted"),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn stop_normally(handler: &ReleaseHandler, name: &str) -> Pid {
    let pid = handler.node().whereis(name).unwrap();
    let exited = handler.node().exit_waiter(pid);
    handler.node().cast_json(pid, &json!({"Stop": "normal"})).unwrap();
    assert!(exited.wait(T).is_some(), "{name} did not stop");
    pid
}

#[test]
fn a_tree_boots_changes_in_place_on_deploy_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let one = archive_of("1.0.0", dir.path(), |t| t);
    let two = archive_of("2.0.0", dir.path(), |t| t);
    let mut config = Config::new(dir.path().join("root"));
    config.boot = Some(one);
    let node = Running(ReleaseHandler::boot(&config).unwrap());
    let handler = &node.0;

    // Boot: the whole tree, in the manifest's order, with its flags.
    let booted = status(handler);
    assert_eq!(
        supervisors(&booted),
        [
            sup("tree_sup", None, "one_for_one", 5, 4),
            sup("rooms", Some("tree_sup"), "simple_one_for_one", 10, 0),
            sup("pool", Some("tree_sup"), "one_for_all", 5, 2),
        ]
    );
    let groups: Vec<(&str, &str, usize)> =
        booted.processes.iter().map(|g| (g.name.as_str(), g.supervisor.as_str(), g.running)).collect();
    assert_eq!(
        groups,
        [("room", "rooms", 0), ("lobby", "tree_sup", 1), ("keeper", "tree_sup", 1), ("worker", "pool", 2)]
    );
    let json = serde_json::to_value(&booted).unwrap();
    assert_eq!(json["processes"][1]["children"][0]["name"], "lobby", "the shape status readers know");
    assert_eq!(call(handler, "lobby", json!("Motd")), "welcome", "read from [config] in init");

    // A module starts rooms under the simple_one_for_one supervisor.
    let first_room =
        Pid::from_u64(call(handler, "lobby", json!({"Open": {"count": 3}})).as_u64().unwrap()).unwrap();
    assert_eq!(
        state(handler, first_room),
        json!({"count": 3, "label": "room"}),
        "its args over the template's"
    );
    let rooms = status(handler).processes.into_iter().find(|g| g.name == "room").unwrap();
    assert_eq!((rooms.running, rooms.children[0].pid.clone()), (1, Some(first_room.to_string())));
    let keeper = handler.node().whereis("keeper").unwrap();
    let lobby = handler.node().whereis("lobby").unwrap();

    // 2.0.0: specs and flags change in place, subtrees go and come.
    let Ok(Response::Deployed(deployed)) = deploy(handler, &two) else { panic!("deploy 2.0.0") };
    let steps: Vec<&str> = deployed.report.steps.iter().map(|s| s.step.as_str()).collect();
    assert!(steps.iter().any(|s| s.starts_with("change_config")), "{steps:#?}");
    let upgraded = status(handler);
    assert_eq!(
        supervisors(&upgraded),
        [
            sup("tree_sup", None, "one_for_one", 8, 4),
            sup("rooms", Some("tree_sup"), "simple_one_for_one", 20, 1),
            sup("jobs", Some("tree_sup"), "rest_for_one", 3, 2),
            sup("more", Some("jobs"), "one_for_one", 5, 1),
        ]
    );
    assert_eq!(handler.node().whereis("pool"), None);
    assert_eq!(handler.node().whereis("worker-0"), None);
    assert_eq!(state(handler, handler.node().whereis("job-b").unwrap())["label"], "b");
    assert_eq!(call(handler, "lobby", json!("Motd")), "hello", "config_change ran in the lobby");
    assert_eq!(handler.node().whereis("lobby"), Some(lobby), "without a restart");
    assert_eq!(handler.node().whereis("keeper"), Some(keeper), "nothing running restarted");
    assert_eq!(state(handler, keeper)["label"], "k1");
    assert!(handler.node().is_alive(first_room), "the rooms supervisor kept its children");
    let second_room = Pid::from_u64(call(handler, "lobby", json!({"Open": {}})).as_u64().unwrap()).unwrap();
    assert_eq!(state(handler, second_room)["label"], "room2", "the new template");
    // The keeper's new spec applies at its next start: permanent now.
    let gone = stop_normally(handler, "keeper");
    let keeper = wait_restarted(handler, "keeper", gone);
    assert_eq!(state(handler, keeper)["label"], "k2");

    // Rollback: the old tree, flags, specs and configuration.
    let Ok(Response::RolledBack(_)) = handler.rollback(None, &mut |_| {}) else { panic!("rollback") };
    let back = status(handler);
    assert_eq!(back.release.version.to_string(), "1.0.0");
    let names: Vec<&str> = back.supervisors.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["tree_sup", "rooms", "pool"]);
    assert_eq!((back.supervisors[0].intensity, back.supervisors[1].intensity), (5, 10));
    assert_eq!(back.supervisors[2].running, 2, "the pool came back with its workers");
    assert_eq!(handler.node().whereis("jobs"), None);
    assert_eq!(call(handler, "lobby", json!("Motd")), "welcome");
    let third_room = Pid::from_u64(call(handler, "lobby", json!({"Open": {}})).as_u64().unwrap()).unwrap();
    assert_eq!(state(handler, third_room)["label"], "room");
    // Transient again: a clean exit leaves it down.
    stop_normally(handler, "keeper");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(handler.node().whereis("keeper"), None);
}

#[test]
fn a_configuration_a_process_refuses_aborts_the_deploy_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let one = archive_of("1.0.0", dir.path(), |t| t);
    let refused = archive_of("2.0.0", dir.path(), |t| {
        t.replace("motd = \"hello\"", "motd = \"hello\"\nrefuse_changes = true")
    });
    let mut config = Config::new(dir.path().join("root"));
    config.boot = Some(one);
    let node = Running(ReleaseHandler::boot(&config).unwrap());
    let handler = &node.0;
    let failure = deploy(handler, &refused).unwrap_err();
    assert!(
        failure.error.contains("lobby") && failure.error.contains("refuse_changes = true"),
        "{}",
        failure.error
    );
    assert!(failure.error.contains("the node still runs tree 1.0.0"), "{}", failure.error);
    let report = failure.report.expect("the aborted upgrade's report");
    let relive_upgrader::Outcome::Aborted { failure } = &report.outcome else { panic!("{report:?}") };
    assert_eq!(failure.name.as_deref(), Some("lobby"));
    assert!(report.rollback.as_ref().unwrap().errors.is_empty(), "{report:?}");
    // All as it was: the tree, the configuration, the store.
    let now = status(handler);
    assert_eq!(now.release.version.to_string(), "1.0.0");
    assert_eq!(
        now.supervisors.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["tree_sup", "rooms", "pool"]
    );
    assert_eq!(handler.node().whereis("jobs"), None, "the subtree the deploy started is gone again");
    assert_eq!(call(handler, "lobby", json!("Motd")), "welcome");
    let config = relive_runtime::module::payload_to_json(&handler.node().config()).unwrap();
    assert_eq!(config, json!({"motd": "welcome"}));
}
