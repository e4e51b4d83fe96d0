//! relive-dist against real `erl` nodes, each world under an epmd of its
//! own (a free port, `ERL_EPMD_PORT`), with native actors on the relive
//! side. Skipped, with a line saying so, when `erl` is not installed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use relive_dist::{DistConfig, Distribution, NodeEvent, Term, encode, term};
use relive_runtime::{Actor, Ctx, Message, Node, NodeConfig, RemoteMessage, ReplyTo, actor_fn};

/// A child killed (and reaped) when dropped, so a failing test leaves no
/// erl or epmd behind.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn erl_installed() -> bool {
    Command::new("erl").arg("-version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An epmd of the test's own, in the foreground (so the guard kills it).
struct World {
    epmd_port: u16,
    _epmd: Kill,
    cookie: String,
    host: String,
}

impl World {
    fn new() -> Option<World> {
        if !erl_installed() {
            eprintln!("skipped: erl is not installed (Debian: apt-get install erlang-nox)");
            return None;
        }
        let epmd_port = free_port();
        let epmd = Command::new("epmd")
            .args(["-port", &epmd_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting epmd");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", epmd_port)).is_err() {
            assert!(Instant::now() < deadline, "epmd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let cookie = format!("C{}", rand_suffix());
        Some(World { epmd_port, _epmd: Kill(epmd), cookie, host: relive_dist::short_host_name() })
    }

    fn config(&self, name: &str) -> DistConfig {
        let mut config = DistConfig::new(&format!("{name}@{}", self.host), self.cookie.clone());
        config.epmd_port = self.epmd_port;
        config.start_epmd = false;
        config
    }

    fn node_name(&self, name: &str) -> String {
        format!("{name}@{}", self.host)
    }

    /// Runs `erl -sname NAME` with `script` (Erlang expressions; it must
    /// end by halting), with the world's epmd and `cookie`; returns the
    /// child and a channel of its output lines.
    fn erl(&self, name: &str, cookie: &str, extra: &[&str], script: &str) -> (Kill, mpsc::Receiver<String>) {
        let mut child = Command::new("erl")
            .args(["-noshell", "-sname", name, "-setcookie", cookie])
            .args(extra)
            .args(["-eval", script])
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting erl");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("erl: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (Kill(child), rx)
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish() % 1_000_000_007
}

/// The next line starting with `prefix`, within `timeout`.
fn line(rx: &mpsc::Receiver<String>, prefix: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return line,
            Ok(_) => continue,
            Err(_) => panic!("no line starting with {prefix:?} within {timeout:?}"),
        }
    }
}

fn node() -> Node {
    Node::start(NodeConfig { workers: 2, ..NodeConfig::default() })
}

/// Echoes `{From, Msg}` back to From as `{echo, Msg}`, answers calls with
/// `{got, Req}`.
struct Echo(Distribution);

impl Actor for Echo {
    fn handle(&mut self, message: Message, ctx: &mut Ctx<'_>) {
        let Ok(message) = message.downcast::<RemoteMessage>() else { return };
        let (Term::Tuple(t), _) = term::decode(&message.term.0).unwrap() else { return };
        if let [Term::Pid(from), msg] = t.elements.as_slice() {
            let to = self.0.pid_of(from);
            ctx.send(to, encode(&term::tuple(vec![term::atom("echo"), msg.clone()]))).unwrap();
        }
    }

    fn handle_call(&mut self, request: Message, reply: ReplyTo, _ctx: &mut Ctx<'_>) {
        let request = request.downcast::<RemoteMessage>().unwrap();
        let (request, _) = term::decode(&request.term.0).unwrap();
        if term::atom_name(&request) == Some("crash") {
            panic!("asked to crash");
        }
        reply.reply_with(encode(&term::tuple(vec![term::atom("got"), request])));
    }
}

#[test]
fn erl_pings_sends_calls_monitors_and_links_a_relive_node() {
    let Some(world) = World::new() else { return };
    let node = node();
    let dist = Distribution::start(&node, world.config("relive")).unwrap();
    let echo = node.spawn(Echo(dist.clone())).unwrap();
    node.register("echo", echo).unwrap();
    let relive = world.node_name("relive");
    let script = format!(
        r#"
        N = '{relive}',
        io:format("ping ~p~n", [net_adm:ping(N)]),
        {{echo, N}} ! {{self(), hello}},
        receive {{echo, hello}} -> io:format("echoed~n") after 5000 -> io:format("no echo~n") end,
        io:format("call ~p~n", [gen_server:call({{echo, N}}, {{add, 1, 2}})]),
        io:format("noproc ~p~n", [catch gen_server:call({{nobody, N}}, x, 2000)]),
        M = erlang:monitor(process, {{echo, N}}),
        catch gen_server:call({{echo, N}}, crash, 2000),
        receive {{'DOWN', M, process, _, R}} -> io:format("down ~p~n", [R]) after 5000 -> io:format("no down~n") end,
        halt().
        "#
    );
    let (_erl, out) = world.erl("erl1", &world.cookie, &[], &script);
    assert_eq!(line(&out, "ping", Duration::from_secs(30)), "ping pong");
    assert_eq!(line(&out, "echo", Duration::from_secs(10)), "echoed");
    assert_eq!(line(&out, "call", Duration::from_secs(10)), "call {got,{add,1,2}}");
    let noproc = line(&out, "noproc", Duration::from_secs(10));
    assert!(noproc.contains("noproc"), "{noproc}");
    let down = line(&out, "down", Duration::from_secs(10));
    assert!(down.contains("panic") && down.contains("asked to crash"), "{down}");
    dist.stop();
    node.shutdown();
}

#[test]
fn a_wrong_cookie_is_refused_and_the_node_keeps_serving() {
    let Some(world) = World::new() else { return };
    let node = node();
    let dist = Distribution::start(&node, world.config("relive")).unwrap();
    let relive = world.node_name("relive");
    let script = format!(r#"io:format("ping ~p~n", [net_adm:ping('{relive}')]), halt()."#);
    let (_bad, out) = world.erl("intruder", "WRONG", &[], &script);
    assert_eq!(line(&out, "ping", Duration::from_secs(30)), "ping pang");
    let (_good, out) = world.erl("friend", &world.cookie, &[], &script);
    assert_eq!(line(&out, "ping", Duration::from_secs(30)), "ping pong");
    dist.stop();
    node.shutdown();
}

#[test]
fn relive_calls_monitors_and_links_erl_processes_and_sees_nodedown() {
    let Some(world) = World::new() else { return };
    let node = node();
    let dist = Distribution::start(&node, world.config("relive")).unwrap();
    let erl = world.node_name("erl2");
    let script = r#"
        register(erl_echo, spawn(fun Loop() -> receive {From, Msg} -> From ! {reply, Msg}, Loop() end end)),
        register(victim, spawn(fun() -> receive stop -> exit(stopped_by_test) end end)),
        register(srv, spawn(fun Srv() -> receive
            {'$gen_call', {F, T}, whoami} -> F ! {T, self()}, Srv();
            {'$gen_call', {F, T}, R} -> F ! {T, {ok, R}}, Srv()
        end end)),
        io:format("ready~n"),
        receive after 60000 -> ok end,
        halt().
    "#;
    let (erl_child, out) = world.erl("erl2", &world.cookie, &[], script);
    line(&out, "ready", Duration::from_secs(30));

    // A call by name, then a missing name: noproc at once.
    let reply = dist.call(&erl, "srv", term::atom("hi"), Duration::from_secs(10)).unwrap();
    assert_eq!(reply, term::tuple(vec![term::atom("ok"), term::atom("hi")]));
    let missing = dist.call(&erl, "nobody", term::atom("hi"), Duration::from_secs(10)).unwrap_err();
    assert!(missing.to_string().contains("noproc"), "{missing}");

    // Calls from the runtime's own API to {Name, Node} and to a pid: the
    // reply as a module would read it.
    let srv = relive_runtime::Dest::Remote { name: "srv".into(), node: erl.as_str().into() };
    let answer = |reply: Message| reply.downcast::<relive_runtime::ModuleReply>().unwrap();
    let reply = answer(node.call(srv.clone(), encode(&term::binary("hi")), Duration::from_secs(10)).unwrap());
    let reply: std::collections::HashMap<String, String> = rmp_serde::from_slice(&reply.unwrap().0).unwrap();
    assert_eq!(reply["ok"], "hi", "{{ok, <<\"hi\">>}} reads as the variant Ok(\"hi\")");
    let pid = answer(node.call(srv, encode(&term::atom("whoami")), Duration::from_secs(10)).unwrap());
    let pid: u64 = rmp_serde::from_slice(&pid.unwrap().0).unwrap();
    let pid = relive_runtime::Pid::from_u64(pid).unwrap();
    assert!(pid.is_external());
    let reply = answer(node.call(pid, encode(&term::binary("by pid")), Duration::from_secs(10)).unwrap());
    let reply: std::collections::HashMap<String, String> = rmp_serde::from_slice(&reply.unwrap().0).unwrap();
    assert_eq!(reply["ok"], "by pid");
    let nobody = relive_runtime::Dest::Remote { name: "nobody".into(), node: erl.as_str().into() };
    let missing = answer(node.call(nobody, encode(&term::atom("x")), Duration::from_secs(10)).unwrap());
    assert!(missing.unwrap_err().contains("noproc"));

    // A native process sends {Pid, ping} to erl_echo and gets the reply.
    let (tx, rx) = mpsc::channel::<Message>();
    let watcher = node
        .spawn(actor_fn(move |message, _ctx| {
            let _ = tx.send(message);
        }))
        .unwrap();
    dist.monitor_nodes(watcher);
    let me = dist.pid_term(watcher);
    node.send(
        relive_runtime::Dest::Remote { name: "erl_echo".into(), node: erl.as_str().into() },
        encode(&term::tuple(vec![me, term::atom("ping")])),
    )
    .unwrap();
    let got = rx.recv_timeout(Duration::from_secs(10)).unwrap().downcast::<RemoteMessage>().unwrap();
    assert_eq!(
        term::decode(&got.term.0).unwrap().0,
        term::tuple(vec![term::atom("reply"), term::atom("ping")])
    );

    // Kill erl: the node watcher hears nodedown.
    drop(erl_child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = rx.recv_timeout(left).expect("a nodedown");
        if let Ok(NodeEvent::Down(name, reason)) = message.downcast::<NodeEvent>() {
            assert_eq!(name, erl);
            assert_eq!(reason, "noconnection");
            break;
        }
    }
    dist.stop();
    node.shutdown();
}

/// A node that restarts under the same name gets a new creation from EPMD,
/// and what other nodes hold of its old pids names no process: a monitor
/// on one fires `noproc` at once.
#[test]
fn a_restarted_node_has_a_new_creation_and_its_old_pids_are_dead() {
    let Some(world) = World::new() else { return };
    let first = node();
    let dist = Distribution::start(&first, world.config("phoenix")).unwrap();
    let old_pid = first.spawn(actor_fn(|_, _| {})).unwrap();
    let old_term = dist.pid_term(old_pid);
    let old_creation = dist.creation();
    dist.stop();
    first.shutdown();

    let second = node();
    // EPMD frees the name once it sees the old registration close.
    let deadline = Instant::now() + Duration::from_secs(10);
    let dist = loop {
        match Distribution::start(&second, world.config("phoenix")) {
            Ok(dist) => break dist,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_ne!(dist.creation(), old_creation, "a restarted node has a new creation");
    // The live process stops when told, by a message the watcher's node
    // sends after its monitor: one connection keeps their order, so the
    // monitor is in place when the process stops (an exit from this thread
    // could overtake the monitor on the wire, and the watcher then gets
    // noproc).
    let alive_pid =
        second.spawn(actor_fn(|_, ctx| ctx.stop(relive_runtime::ExitReason::error("gone")))).unwrap();
    second.register("doomed", alive_pid).unwrap();

    // Another node monitors the old pid and a live one.
    let watcher_node = node();
    let watcher_dist = Distribution::start(&watcher_node, world.config("watcher")).unwrap();
    let Term::Pid(old) = old_term else { panic!("a pid term") };
    let Term::Pid(live) = dist.pid_term(alive_pid) else { panic!("a pid term") };
    let (old, live) = (watcher_dist.pid_of(&old), watcher_dist.pid_of(&live));
    let (tx, rx) = mpsc::channel::<relive_runtime::Down>();
    let watcher = watcher_node
        .spawn(actor_fn(move |message, ctx| {
            match message.downcast::<(relive_runtime::Pid, relive_runtime::Pid)>() {
                Ok((a, b)) => {
                    ctx.monitor(a);
                    ctx.monitor(b);
                }
                Err(message) => {
                    if let Ok(down) = message.downcast::<relive_runtime::Down>() {
                        let _ = tx.send(down);
                    }
                }
            }
        }))
        .unwrap();
    watcher_node.send(watcher, (old, live)).unwrap();
    let down = rx.recv_timeout(Duration::from_secs(10)).expect("the old pid's monitor fires");
    assert_eq!(down.pid, old);
    assert_eq!(down.reason, relive_runtime::ExitReason::NoProc);
    watcher_dist.send(dist.name(), "doomed", &term::atom("stop")).unwrap();
    let down = rx.recv_timeout(Duration::from_secs(10)).expect("the live pid's monitor fires when it exits");
    assert_eq!(down.pid, live);
    assert_eq!(down.reason.to_string(), "gone");
    watcher_dist.stop();
    dist.stop();
    watcher_node.shutdown();
    second.shutdown();
}

/// Kills the epmd on a port when dropped (`epmd -kill`, which it accepts
/// once no node is registered).
struct EpmdKiller(u16);

impl Drop for EpmdKiller {
    fn drop(&mut self) {
        let _ = Command::new("epmd")
            .args(["-port", &self.0.to_string(), "-kill"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// With no EPMD on its port, a node starts one (`epmd -daemon`, as erl).
#[test]
fn a_node_starts_epmd_when_none_answers() {
    if !erl_installed() {
        eprintln!("skipped: erl is not installed (Debian: apt-get install erlang-nox)");
        return;
    }
    let port = free_port();
    let _killer = EpmdKiller(port);
    let node = node();
    let mut config = DistConfig::new("lonely@localhost", "COOKIE".into());
    config.epmd_port = port;
    config.start_epmd = true;
    let dist = Distribution::start(&node, config).unwrap();
    let names = Command::new("epmd").args(["-port", &port.to_string(), "-names"]).output().unwrap();
    let names = String::from_utf8_lossy(&names.stdout).to_string();
    assert!(names.contains("name lonely at port"), "{names}");
    dist.stop();
    node.shutdown();
}
