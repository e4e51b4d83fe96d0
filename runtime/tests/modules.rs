//! Module processes end to end: two versions of the counter loaded at once,
//! processes on each, moved between them, and the JSON bridge.

mod support;

use std::time::Duration;

use relive_runtime::{Node, NodeConfig, module::json_to_payload};
use serde_json::json;

const T: Duration = Duration::from_secs(5);

fn node() -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(NodeConfig { code_dir: Some(dir.path().join("code")), ..NodeConfig::default() });
    (node, dir)
}

#[test]
fn v1_and_v2_run_side_by_side_and_a_process_moves_up_and_back_down() {
    let (node, _dir) = node();
    let code = node.code_server().unwrap();
    let loaded = code.load(&support::library("counter-v1")).unwrap();
    assert_eq!((loaded.name.as_str(), loaded.version.to_string().as_str()), ("counter", "1.0.0"));
    let old = node
        .spawn_module("counter", json_to_payload(&json!({"label": "a", "count": 5})).unwrap(), T)
        .unwrap();
    assert_eq!(node.call_json(old, &json!({"Add": 2}), T).unwrap(), json!(7));

    let loaded = code.load(&support::library("counter-v2")).unwrap();
    assert_eq!(loaded.previous.map(|v| v.to_string()), Some("1.0.0".into()));
    let new = node.spawn_module("counter", json_to_payload(&json!({"label": "b"})).unwrap(), T).unwrap();
    assert_eq!(
        node.call_json(old, &json!("Version"), T).unwrap(),
        json!("1.0.0"),
        "old process keeps old code"
    );
    assert_eq!(node.call_json(new, &json!("Version"), T).unwrap(), json!("2.0.0"));
    assert!(code.check_process_code(old, "counter"));
    assert!(!code.check_process_code(new, "counter"));

    let v2 = code.current("counter").unwrap();
    code.upgrade_process(&node, old, &v2, &[], T).unwrap();
    assert_eq!(
        node.call_json(old, &json!("State"), T).unwrap(),
        json!({"total": 7, "label": "a", "adds": 0})
    );
    assert!(!code.check_process_code(old, "counter"));

    let v1 = code.old("counter").unwrap();
    code.upgrade_process(&node, old, &v1, &[], T).unwrap();
    assert_eq!(node.call_json(old, &json!("State"), T).unwrap(), json!({"count": 7, "label": "a"}));
    node.shutdown();
}
