//! Module ABI 3 end to end, on module processes (examples/abi3-probe-v1 and
//! -v2, the same probe at two versions): links and exit trapping, monitors,
//! exit signals, the registry, deferred replies, outbound connections, port
//! hand-over, listener options (`listen_with`), the node's configuration
//! and `config_change`, and that what the node holds for a process (links,
//! monitors, a deferred call, a port, its name) outlives a switch of its
//! code. Also kv 2.1.0's `maxclients` and `timeout`, the options' first
//! real user.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use relive_runtime::{
    CodeError, ConfigChangeError, ExitReason, LoadError, ModuleError, Node, Payload, Pid, actor_fn,
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(5);

/// A node with the probe's version 1 loaded.
fn node() -> (Node, tempfile::TempDir) {
    let (node, dir) = support::node_with_code();
    node.code_server().unwrap().load(&support::library("abi3-probe-v1")).unwrap();
    (node, dir)
}

fn spawn(node: &Node) -> Pid {
    node.spawn_module("abi3-probe", support::payload(json!(null)), T).unwrap()
}

fn call(node: &Node, pid: Pid, request: Value) -> Value {
    node.call_json(pid, &request, T).unwrap_or_else(|e| panic!("calling {pid} with {request}: {e}"))
}

fn id(pid: Pid) -> Value {
    json!(pid.as_u64())
}

fn events(node: &Node, pid: Pid) -> Vec<Value> {
    match call(node, pid, json!("Events")) {
        Value::Object(mut reply) => match reply.remove("Events") {
            Some(Value::Array(events)) => events,
            other => panic!("Events answered {other:?}"),
        },
        other => panic!("Events answered {other}"),
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `trigger` and returns how `pid` exited.
fn exit_of(node: &Node, pid: Pid, trigger: impl FnOnce()) -> ExitReason {
    let waiter = node.exit_waiter(pid);
    trigger();
    waiter.wait(T).unwrap_or_else(|| panic!("{pid} did not exit"))
}

/// Stops `pid` with `reason` through the probe's own `ctx.stop`.
fn stop(node: &Node, pid: Pid, reason: &str) {
    let exited = exit_of(node, pid, || {
        call(node, pid, json!({"Stop": reason}));
    });
    assert_eq!(exited.to_string(), reason);
}

#[test]
fn links_trap_exits_unlink_and_exit_signals_follow_erlang() {
    let (node, _dir) = node();

    // Trapping: the linked process's exit arrives as Info::Exit.
    let (a, b) = (spawn(&node), spawn(&node));
    assert_eq!(call(&node, a, json!({"TrapExit": true})), json!({"Bool": false}));
    assert_eq!(
        call(&node, a, json!({"TrapExit": true})),
        json!({"Bool": true}),
        "returns the previous setting"
    );
    assert_eq!(call(&node, a, json!({"Link": id(b)})), json!({"Done": {"Ok": null}}));
    stop(&node, b, "boom");
    assert_eq!(
        events(&node, a),
        vec![json!({"Exit": {"from": id(b), "reason": "boom", "seen_by": "1.0.0"}})]
    );

    // Not trapping: the linked process's crash takes this one down.
    let (c, d) = (spawn(&node), spawn(&node));
    assert_eq!(call(&node, c, json!({"Link": id(d)})), json!({"Done": {"Ok": null}}));
    let exited = exit_of(&node, c, || {
        call(&node, d, json!({"Stop": "boom"}));
    });
    assert_eq!(exited, ExitReason::error("boom"));

    // Unlinked: nothing reaches it.
    let (e, f) = (spawn(&node), spawn(&node));
    call(&node, e, json!({"Link": id(f)}));
    assert_eq!(call(&node, e, json!({"Unlink": id(f)})), json!("Unit"));
    stop(&node, f, "boom");
    assert!(node.is_alive(e));
    assert_eq!(call(&node, e, json!("Version")), json!({"Text": "1.0.0"}));

    // Linking to a dead process fails, and a trapping process hears noproc.
    let g = spawn(&node);
    call(&node, g, json!({"TrapExit": true}));
    let linked = call(&node, g, json!({"Link": id(b)}));
    assert!(linked["Done"]["Err"].as_str().unwrap().contains("no such process"), "{linked}");
    assert_eq!(
        events(&node, g),
        vec![json!({"Exit": {"from": id(b), "reason": "noproc", "seen_by": "1.0.0"}})]
    );

    // Exit signals: trapped as Info::Exit; "kill" is not trappable.
    let (h, i) = (spawn(&node), spawn(&node));
    call(&node, h, json!({"TrapExit": true}));
    call(&node, i, json!({"Exit": {"pid": id(h), "reason": "stop-now"}}));
    assert_eq!(
        events(&node, h),
        vec![json!({"Exit": {"from": id(i), "reason": "stop-now", "seen_by": "1.0.0"}})]
    );
    let killed = exit_of(&node, h, || {
        call(&node, i, json!({"Exit": {"pid": id(h), "reason": "kill"}}));
    });
    assert_eq!(killed, ExitReason::Killed);

    // Not trapping: "normal" is ignored, any other reason ends it.
    let j = spawn(&node);
    call(&node, i, json!({"Exit": {"pid": id(j), "reason": "normal"}}));
    assert_eq!(call(&node, j, json!("Version")), json!({"Text": "1.0.0"}), "a normal exit signal is ignored");
    let exited = exit_of(&node, j, || {
        call(&node, i, json!({"Exit": {"pid": id(j), "reason": "bye"}}));
    });
    assert_eq!(exited, ExitReason::error("bye"));
    node.shutdown();
}

#[test]
fn monitors_fire_once_with_their_ref_noproc_at_once_and_not_after_demonitor() {
    let (node, _dir) = node();
    let (a, b) = (spawn(&node), spawn(&node));
    let monitor = call(&node, a, json!({"Monitor": id(b)}))["Monitor"].clone();
    assert_eq!(monitor["pid"], id(b));
    stop(&node, b, "bye");
    assert_eq!(
        events(&node, a),
        vec![json!({"Down": {"monitor": monitor, "pid": id(b), "reason": "bye", "seen_by": "1.0.0"}})]
    );

    // A dead pid: the Down is already in the mailbox when monitor returns,
    // so the next call finds it.
    let again = call(&node, a, json!({"Monitor": id(b)}))["Monitor"].clone();
    assert_ne!(again, monitor);
    assert_eq!(
        events(&node, a)[1],
        json!({"Down": {"monitor": again, "pid": id(b), "reason": "noproc", "seen_by": "1.0.0"}})
    );

    // Demonitored: nothing arrives. The Down would be in a's mailbox by the
    // time the exit waiter (a later monitor) hears of the exit.
    let c = spawn(&node);
    let watched = call(&node, a, json!({"Monitor": id(c)}))["Monitor"].clone();
    assert_eq!(call(&node, a, json!({"Demonitor": watched})), json!({"Bool": true}));
    assert_eq!(call(&node, a, json!({"Demonitor": watched})), json!({"Bool": false}), "already removed");
    stop(&node, c, "bye");
    assert_eq!(events(&node, a).len(), 2, "no Down after demonitor: {:?}", events(&node, a));
    node.shutdown();
}

#[test]
fn a_module_process_registers_finds_and_unregisters_names() {
    let (node, _dir) = node();
    let (a, b) = (spawn(&node), spawn(&node));
    assert_eq!(call(&node, a, json!({"Register": "probe-a"})), json!({"Done": {"Ok": null}}));
    assert_eq!(node.whereis("probe-a"), Some(a));
    assert_eq!(call(&node, b, json!({"Whereis": "probe-a"})), json!({"MaybePid": id(a)}));
    let taken = call(&node, b, json!({"Register": "probe-a"}));
    assert!(taken["Done"]["Err"].as_str().unwrap().contains("already registered"), "{taken}");
    let twice = call(&node, a, json!({"Register": "probe-a2"}));
    assert!(twice["Done"]["Err"].as_str().unwrap().contains("already registered as"), "{twice}");
    assert_eq!(node.call_json("probe-a", &json!("Pid"), T).unwrap(), json!({"Pid": id(a)}));
    assert_eq!(call(&node, b, json!({"Unregister": "probe-a"})), json!({"Bool": true}));
    assert_eq!(call(&node, b, json!({"Unregister": "probe-a"})), json!({"Bool": false}));
    assert_eq!(call(&node, b, json!({"Whereis": "probe-a"})), json!({"MaybePid": null}));
    assert_eq!(node.whereis("probe-a"), None);
    // The name is free again, and goes with its process.
    assert_eq!(call(&node, b, json!({"Register": "probe-a"})), json!({"Done": {"Ok": null}}));
    stop(&node, b, "normal");
    assert_eq!(call(&node, a, json!({"Whereis": "probe-a"})), json!({"MaybePid": null}));
    node.shutdown();
}

#[test]
fn deferred_replies_are_answered_later_once_and_otherwise_time_out_or_fail_with_the_exit() {
    let (node, _dir) = node();
    let (a, b) = (spawn(&node), spawn(&node));

    // Deferred, then answered by a later cast; what handle_call returned
    // (Dropped) never reaches the caller.
    let caller = {
        let node = node.clone();
        std::thread::spawn(move || node.call_json(a, &json!("Defer"), T))
    };
    wait_until("the call is deferred", || call(&node, a, json!("Pending")) == json!({"Count": 1}));
    node.cast_json(a, &json!({"Answer": 42})).unwrap();
    assert_eq!(caller.join().unwrap().unwrap(), json!({"Answered": {"value": 42, "by": "1.0.0"}}));

    // Answered from a timer, and within the handle_call that deferred it.
    assert_eq!(
        call(&node, a, json!({"DeferForTimer": {"ms": 1, "value": 7}})),
        json!({"Answered": {"value": 7, "by": "1.0.0"}})
    );
    assert_eq!(
        call(&node, a, json!({"DeferAndAnswer": 5})),
        json!({"Answered": {"value": 5, "by": "1.0.0"}})
    );

    // A token answers once; defer_reply works once per call; a token is
    // good only in the process that deferred the call.
    let again = call(&node, a, json!({"AnswerAgain": 9}));
    assert!(again["Done"]["Err"].as_str().unwrap().contains("already used"), "{again}");
    let twice = call(&node, a, json!("DeferTwice"));
    assert!(twice["Done"]["Err"].as_str().unwrap().contains("once per call"), "{twice}");
    let foreign = call(&node, a, json!({"AnswerForeign": {"pid": id(b), "value": 1}}));
    let text = foreign["Done"]["Err"].as_str().unwrap();
    assert!(text.contains(&format!("belongs to process {b}")), "{foreign}");

    // Never answered: the caller times out, and says on whom it waited.
    let error = node.call_json(a, &json!("Defer"), Duration::from_millis(200)).unwrap_err().to_string();
    assert!(error.contains("timed out") && error.contains(&format!("waiting for {a}")), "{error}");
    let called = call(&node, b, json!({"AskOther": {"pid": id(a), "request": "Defer", "timeout_ms": 200}}));
    let text = called["Called"]["Err"].as_str().unwrap();
    assert!(text.contains("timed out") && text.contains(&format!("waiting for {a}")), "{called}");

    // The process exits before answering: the caller learns why.
    let c = spawn(&node);
    let caller = {
        let node = node.clone();
        std::thread::spawn(move || node.call_json(c, &json!("Defer"), T))
    };
    wait_until("the call is deferred", || call(&node, c, json!("Pending")) == json!({"Count": 1}));
    node.exit(c, ExitReason::error("gone"));
    let error = caller.join().unwrap().unwrap_err().to_string();
    assert!(error.contains("exited (gone)"), "{error}");
    node.shutdown();
}

/// Reads exactly `n` bytes.
fn read_n(stream: &mut TcpStream, n: usize) -> String {
    let mut buf = vec![0; n];
    stream.read_exact(&mut buf).unwrap();
    String::from_utf8(buf).unwrap()
}

/// The text of every `Data` event of `port` the process logged, in order.
fn data(node: &Node, pid: Pid, port: &Value) -> String {
    events(node, pid)
        .iter()
        .filter_map(|e| e.get("Data"))
        .filter(|d| &d["port"] == port)
        .map(|d| d["text"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn connect_exchanges_bytes_and_a_port_handed_over_delivers_to_its_new_owner() {
    let (node, _dir) = node();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (a, b, c) = (spawn(&node), spawn(&node), spawn(&node));

    let connected = call(&node, a, json!({"Connect": {"addr": addr, "timeout_ms": 5000}}));
    let port = connected["Port"]["Ok"].clone();
    assert!(port.is_u64(), "{connected}");
    let (mut peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(T)).unwrap();
    assert_eq!(
        call(&node, a, json!({"PortSend": {"port": port, "text": "hello"}})),
        json!({"Done": {"Ok": null}})
    );
    assert_eq!(read_n(&mut peer, 5), "hello");
    peer.write_all(b"world").unwrap();
    wait_until("a gets the bytes", || data(&node, a, &port) == "world");

    // Only the owner hands a port over; then its events go to the new owner.
    let refused = call(&node, c, json!({"GiveAway": {"port": port, "to": id(c)}}));
    assert!(refused["Done"]["Err"].as_str().unwrap().contains(&format!("owned by {a}")), "{refused}");
    assert_eq!(
        call(&node, a, json!({"GiveAway": {"port": port, "to": id(b)}})),
        json!({"Done": {"Ok": null}})
    );
    peer.write_all(b"again").unwrap();
    wait_until("b gets the bytes", || data(&node, b, &port) == "again");
    assert_eq!(data(&node, a, &port), "world", "nothing more reaches the old owner");
    call(&node, b, json!({"PortSend": {"port": port, "text": "from-b"}}));
    assert_eq!(read_n(&mut peer, 6), "from-b");
    drop(peer);
    wait_until("b hears the close", || {
        events(&node, b).iter().any(|e| e.get("Closed").is_some_and(|c| c["port"] == port))
    });

    // A refused connection is an error naming the address.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = closed.local_addr().unwrap().to_string();
    drop(closed);
    let refused = call(&node, a, json!({"Connect": {"addr": nobody, "timeout_ms": 5000}}));
    let text = refused["Port"]["Err"].as_str().unwrap();
    assert!(text.contains(&format!("cannot connect to {nobody}")), "{refused}");
    let bad = call(&node, a, json!({"Connect": {"addr": "no port here", "timeout_ms": 5000}}));
    assert!(bad["Port"]["Err"].as_str().unwrap().contains("not an address"), "{bad}");

    // A connection closes when its owner exits.
    let d = spawn(&node);
    call(&node, d, json!({"Connect": {"addr": addr, "timeout_ms": 5000}}));
    let (mut peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(T)).unwrap();
    stop(&node, d, "normal");
    let mut rest = Vec::new();
    assert_eq!(peer.read_to_end(&mut rest).unwrap(), 0, "the peer sees the connection close");
    node.shutdown();
}

/// The ports of the connections a listener of `pid` accepted, in order.
fn accepted(node: &Node, pid: Pid) -> Vec<Value> {
    events(node, pid).iter().filter_map(|e| e.get("Accepted")).map(|a| a["port"].clone()).collect()
}

/// The reason `port` closed with, if it did.
fn closed_reason(node: &Node, pid: Pid, port: &Value) -> Option<String> {
    events(node, pid)
        .iter()
        .filter_map(|e| e.get("Closed"))
        .find(|c| &c["port"] == port)
        .map(|c| c["reason"].as_str().unwrap().to_string())
}

#[test]
fn listen_with_caps_connections_with_the_refusal_line_and_times_out_idle_ones() {
    const REFUSAL: &str = "-ERR max number of clients reached\r\n";
    let (node, _dir) = node();
    let a = spawn(&node);
    let listening = call(
        &node,
        a,
        json!({"ListenWith": {"addr": "127.0.0.1:0", "max_connections": 2, "refusal": REFUSAL, "idle_timeout_ms": null}}),
    );
    let addr = listening["Listening"]["Ok"][1].as_str().unwrap_or_else(|| panic!("{listening}")).to_string();

    let first = TcpStream::connect(&addr).unwrap();
    let mut second = TcpStream::connect(&addr).unwrap();
    wait_until("both clients are accepted", || accepted(&node, a).len() == 2);
    let mut over = TcpStream::connect(&addr).unwrap();
    over.set_read_timeout(Some(T)).unwrap();
    let mut refused = Vec::new();
    over.read_to_end(&mut refused).unwrap();
    assert_eq!(String::from_utf8_lossy(&refused), REFUSAL, "the client over the cap gets the line, then EOF");
    assert_eq!(accepted(&node, a).len(), 2, "the refused client never reaches the module");

    // The clients within the cap are served, and a closed one frees a seat.
    second.write_all(b"still here").unwrap();
    let second_port = accepted(&node, a)[1].clone();
    wait_until("the second client's bytes arrive", || data(&node, a, &second_port) == "still here");
    let first_port = accepted(&node, a)[0].clone();
    drop(first);
    wait_until("the first client's close is seen", || closed_reason(&node, a, &first_port).is_some());
    let mut third = TcpStream::connect(&addr).unwrap();
    wait_until("a client fits again", || accepted(&node, a).len() == 3);
    let third_port = accepted(&node, a)[2].clone();
    third.write_all(b"in").unwrap();
    wait_until("the new client is served", || data(&node, a, &third_port) == "in");

    // Idle connections close with a reason the module can read; the client
    // sees the close.
    let b = spawn(&node);
    let listening = call(
        &node,
        b,
        json!({"ListenWith": {"addr": "127.0.0.1:0", "max_connections": null, "refusal": null, "idle_timeout_ms": 100}}),
    );
    let addr = listening["Listening"]["Ok"][1].as_str().unwrap_or_else(|| panic!("{listening}")).to_string();
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.set_read_timeout(Some(T)).unwrap();
    wait_until("the idle client is accepted", || accepted(&node, b).len() == 1);
    let idle_port = accepted(&node, b)[0].clone();
    let mut rest = Vec::new();
    assert_eq!(idle.read_to_end(&mut rest).unwrap(), 0, "the idle client sees its connection close");
    wait_until("the module hears the idle close", || closed_reason(&node, b, &idle_port).is_some());
    let reason = closed_reason(&node, b, &idle_port).unwrap();
    assert!(reason.starts_with("idle timeout"), "{reason}");

    // Options out of range are refused with what to give instead.
    let zero = call(
        &node,
        b,
        json!({"ListenWith": {"addr": "127.0.0.1:0", "max_connections": 0, "refusal": null, "idle_timeout_ms": null}}),
    );
    let text = zero["Listening"]["Err"].as_str().unwrap_or_else(|| panic!("{zero}"));
    assert!(text.contains("max_connections is 0") && text.contains("127.0.0.1:0"), "{text}");
    let zero = call(
        &node,
        b,
        json!({"ListenWith": {"addr": "127.0.0.1:0", "max_connections": null, "refusal": null, "idle_timeout_ms": 0}}),
    );
    let text = zero["Listening"]["Err"].as_str().unwrap_or_else(|| panic!("{zero}"));
    assert!(text.contains("idle_timeout is 0"), "{text}");
    drop((second, third));
    node.shutdown();
}

fn config(value: Value) -> Payload {
    support::payload(value)
}

#[test]
fn the_node_config_is_read_by_modules_and_config_change_runs_in_the_process() {
    let (node, _dir) = node();
    let a = spawn(&node);
    assert_eq!(call(&node, a, json!("Config")), json!({"Config": {"Ok": {"greeting": "", "limit": 0}}}));
    let first = config(json!({"greeting": "hi", "limit": 3}));
    node.set_config(first.clone());
    assert_eq!(call(&node, a, json!("Config")), json!({"Config": {"Ok": {"greeting": "hi", "limit": 3}}}));
    node.set_config(config(json!({"limit": "three"})));
    let bad = call(&node, a, json!("Config"));
    assert!(bad["Config"]["Err"].as_str().unwrap().contains("decoding the node's configuration"), "{bad}");

    // A change: the process sees old and new, and reads the new one.
    let second = config(json!({"greeting": "hello", "limit": 4}));
    node.set_config(second.clone());
    let (old, new) = (std::sync::Arc::new(first), std::sync::Arc::new(second));
    node.config_change(a, old.clone(), new.clone(), T, T).unwrap();
    assert_eq!(
        events(&node, a),
        vec![json!({"Config": {
            "old": {"greeting": "hi", "limit": 3},
            "new": {"greeting": "hello", "limit": 4},
            "read": {"greeting": "hello", "limit": 4},
            "seen_by": "1.0.0"
        }})]
    );

    // Refused by an error or a panic: the caller learns why, the process
    // lives on.
    call(&node, a, json!({"RefuseConfig": "not now"}));
    let error = node.config_change(a, old.clone(), new.clone(), T, T).unwrap_err();
    assert!(
        matches!(&error, ConfigChangeError::Refused { pid, error: ModuleError::Failed(text), .. } if *pid == a && text == "not now"),
        "{error:?}"
    );
    assert!(error.to_string().contains("refused the new configuration: not now"), "{error}");
    call(&node, a, json!({"RefuseConfig": "panic"}));
    let error = node.config_change(a, old.clone(), new.clone(), T, T).unwrap_err();
    assert!(
        matches!(&error, ConfigChangeError::Refused { error: ModuleError::Panicked(_), .. }),
        "{error:?}"
    );
    assert_eq!(
        call(&node, a, json!("Version")),
        json!({"Text": "1.0.0"}),
        "a refusal does not end the process"
    );

    // On a suspended process, as a suspend_together migration would.
    call(&node, a, json!({"RefuseConfig": null}));
    node.suspend(a, T).unwrap();
    let changed = node.with_suspended(a, |actor| {
        actor.as_module_process().expect("a module process").config_change(&node, &new, &old)
    });
    node.resume(a).unwrap();
    changed.unwrap().unwrap();
    assert_eq!(events(&node, a).len(), 2);

    // Only module processes have the callback.
    let native = node.spawn(actor_fn(|_, _| {})).unwrap();
    let error = node.config_change(native, old.clone(), new.clone(), T, T).unwrap_err();
    assert_eq!(error, ConfigChangeError::NotAModuleProcess(native));
    node.shutdown();
}

#[test]
fn links_monitors_a_deferred_call_a_port_and_a_name_survive_an_upgrade_of_either_side() {
    let (node, _dir) = node();
    let code = node.code_server().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (a, b, c, d) = (spawn(&node), spawn(&node), spawn(&node), spawn(&node));

    // Set up on version 1.
    call(&node, a, json!({"TrapExit": true}));
    call(&node, a, json!({"Link": id(c)}));
    let monitor = call(&node, a, json!({"Monitor": id(b)}))["Monitor"].clone();
    call(&node, a, json!({"Register": "survivor"}));
    let port = call(&node, a, json!({"Connect": {"addr": addr, "timeout_ms": 5000}}))["Port"]["Ok"].clone();
    let (mut peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(T)).unwrap();
    assert_eq!(
        call(&node, a, json!({"GiveAway": {"port": port, "to": id(d)}})),
        json!({"Done": {"Ok": null}})
    );
    let caller = {
        let node = node.clone();
        std::thread::spawn(move || node.call_json(a, &json!("Defer"), T))
    };
    wait_until("the call is deferred", || call(&node, a, json!("Pending")) == json!({"Count": 1}));

    // Version 2: a (the linker, monitor and deferrer), b (the monitored
    // one) and d (the port's new owner) move to it; c stays on version 1.
    code.load(&support::library("abi3-probe-v2")).unwrap();
    let v2 = code.current("abi3-probe").unwrap();
    for pid in [a, b, d] {
        code.upgrade_process(&node, pid, &v2, &[], T).unwrap();
        assert_eq!(call(&node, pid, json!("Version")), json!({"Text": "2.0.0"}));
    }
    assert!(code.check_process_code(c, "abi3-probe"), "c still runs version 1");

    // The call version 1 deferred is answered by version 2.
    node.cast_json(a, &json!({"Answer": 11})).unwrap();
    assert_eq!(caller.join().unwrap().unwrap(), json!({"Answered": {"value": 11, "by": "2.0.0"}}));
    // The monitor and the link version 1 made fire into version 2.
    stop(&node, b, "bye");
    stop(&node, c, "boom");
    assert_eq!(
        events(&node, a),
        vec![
            json!({"Down": {"monitor": monitor, "pid": id(b), "reason": "bye", "seen_by": "2.0.0"}}),
            json!({"Exit": {"from": id(c), "reason": "boom", "seen_by": "2.0.0"}}),
        ]
    );
    // The name stayed; the port handed over keeps delivering to its owner.
    assert_eq!(node.whereis("survivor"), Some(a));
    peer.write_all(b"after").unwrap();
    wait_until("d (on version 2) gets the bytes", || {
        events(&node, d).iter().any(|e| {
            e.get("Data")
                .is_some_and(|got| got["port"] == port && got["text"] == "after" && got["seen_by"] == "2.0.0")
        })
    });
    call(&node, d, json!({"PortSend": {"port": port, "text": "still"}}));
    assert_eq!(read_n(&mut peer, 5), "still");
    node.shutdown();
}

#[test]
fn a_library_of_another_abi_version_is_refused_with_what_to_do() {
    let (node, _dir) = support::node_with_code();
    let path = support::library("bad-abi");
    let error = node.code_server().unwrap().load(&path).unwrap_err();
    assert!(matches!(&error, CodeError::Load(LoadError::AbiMismatch { found: 999, .. })), "{error:?}");
    let text = error.to_string();
    for part in [
        path.display().to_string(),
        "module ABI 999".to_string(),
        format!("expects ABI {}", relive_abi::ABI_VERSION),
        format!("rebuild the module against relive-abi {}", relive_abi::ABI_CRATE_VERSION),
    ] {
        assert!(text.contains(&part), "{text:?} should contain {part:?}");
    }
    assert_eq!(relive_abi::ABI_VERSION, 5);
    node.shutdown();
}

/// kv 2.1.0, a real module, takes its listener's limits from its init
/// arguments, as Redis's `maxclients` and `timeout`: a client over the cap
/// gets Redis's error and a close, and an idle client is disconnected.
#[test]
fn kv_takes_maxclients_and_timeout_from_its_arguments() {
    let (node, _dir) = support::node_with_code();
    node.code_server().unwrap().load(&support::library("kv-v4")).expect("loading kv 2.1.0");
    let args = json!({"listen": "127.0.0.1:0", "maxclients": 2, "timeout": 1});
    let kv = node.spawn_module("kv", support::payload(args), T).expect("starting kv");
    let addr = call(&node, kv, json!("Addr")).as_str().unwrap().to_string();
    let ping = |client: &mut TcpStream| {
        client.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
        read_n(client, 7)
    };
    let mut first = TcpStream::connect(&addr).unwrap();
    first.set_read_timeout(Some(T)).unwrap();
    let mut second = TcpStream::connect(&addr).unwrap();
    second.set_read_timeout(Some(T)).unwrap();
    assert_eq!(ping(&mut first), "+PONG\r\n");
    assert_eq!(ping(&mut second), "+PONG\r\n");
    let mut over = TcpStream::connect(&addr).unwrap();
    over.set_read_timeout(Some(T)).unwrap();
    let mut refused = Vec::new();
    over.read_to_end(&mut refused).unwrap();
    assert_eq!(String::from_utf8_lossy(&refused), "-ERR max number of clients reached\r\n");
    // Left alone, both clients are disconnected after `timeout`.
    for client in [&mut first, &mut second] {
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).unwrap(), 0, "an idle client is disconnected");
    }
    let mut late = TcpStream::connect(&addr).unwrap();
    late.set_read_timeout(Some(T)).unwrap();
    assert_eq!(ping(&mut late), "+PONG\r\n", "the seats are free again");

    let zero = json!({"listen": "127.0.0.1:0", "maxclients": 0});
    let error = node.spawn_module("kv", support::payload(zero), T).unwrap_err().to_string();
    assert!(error.contains("max_connections is 0"), "{error}");
    node.shutdown();
}
