//! A relive node in an Erlang cluster (issue 16), end to end: `relive node
//! start --sname` nodes running the dist_echo release
//! (examples/dist-echo), real `erl` nodes, and a hand-made peer for bad
//! input. Every world has an epmd of its own on a free port
//! (`ERL_EPMD_PORT`), its own cookie file and HOME, and every child (epmd,
//! erl, relive) is killed by a guard when the test ends, however it ends.
//! Tests that need `erl` are skipped, saying so, where it is not installed.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Epmd, Kill, alive, repo, signal, wait_until};

fn installed(program: &str) -> bool {
    Command::new(program).arg("-version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// The dist_echo release, built once per test binary.
fn archive() -> &'static PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let out = repo().join("target").join("release-archives");
        common::build(&repo().join("examples").join("releases").join("dist-echo-1.0.0"), &out)
    })
}

/// An isolated Erlang world (epmd, cookie, HOME) and this host's name.
struct World {
    epmd: Epmd,
    host: String,
}

impl World {
    /// `None` (the test is skipped, and says so) without epmd, or without
    /// erl when `erl` is needed.
    fn new(erl: bool) -> Option<World> {
        if erl && !installed("erl") {
            eprintln!("skipped: erl is not installed (Debian: apt-get install erlang-nox)");
            return None;
        }
        Some(World { epmd: Epmd::start()?, host: relive_dist::short_host_name() })
    }

    fn full(&self, name: &str) -> String {
        format!("{name}@{}", self.host)
    }

    /// `relive node start --sname NAME` on the dist_echo release, detached.
    fn relive(&self, name: &str, extra: &[&str]) -> ReliveNode {
        let root = self.epmd.dir.path().join(name);
        let out = Command::new(env!("CARGO_BIN_EXE_relive"))
            .args(["node", "start", "--root", root.to_str().unwrap(), "--boot"])
            .arg(archive())
            .args(["--sname", name, "--cookie-file"])
            .arg(self.epmd.dir.path().join("cookie"))
            .args(extra)
            .env("ERL_EPMD_PORT", self.epmd.port.to_string())
            .env("HOME", self.epmd.dir.path())
            .output()
            .expect("running relive node start");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let pid: Option<u32> = stdout
            .split("(pid ")
            .nth(1)
            .and_then(|rest| rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok());
        let node = ReliveNode { root, pid: pid.unwrap_or(0), name: self.full(name) };
        assert!(
            out.status.success() && pid.is_some(),
            "relive node start failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        node
    }

    /// `erl -sname NAME -setcookie COOKIE ... -eval SCRIPT`, its output
    /// lines on a channel (and echoed to the test's stderr).
    fn erl(&self, name: &str, cookie: &str, extra: &[&str], script: &str) -> (Kill, mpsc::Receiver<String>) {
        let mut child = Command::new("erl")
            .args(["-noshell", "-sname", name, "-setcookie", cookie])
            .args(extra)
            .args(["-eval", script])
            .env("ERL_EPMD_PORT", self.epmd.port.to_string())
            .env("HOME", self.epmd.dir.path())
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

    /// A hidden relive-dist client in the test process, for calls.
    fn client(&self, name: &str) -> relive_dist::Distribution {
        let mut config = relive_dist::DistConfig::new(&self.full(name), self.epmd.cookie.clone());
        config.epmd_port = self.epmd.port;
        config.start_epmd = false;
        relive_dist::Distribution::start_client(config).expect("a client node")
    }
}

/// A node started by `relive node start`; stopped (then killed) on drop.
struct ReliveNode {
    root: PathBuf,
    pid: u32,
    name: String,
}

impl ReliveNode {
    fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("node.log")).unwrap_or_default()
    }

    /// The distribution port, from the node's log line.
    fn port(&self) -> u16 {
        let log = self.log();
        let line = log.lines().find(|l| l.contains("node: distribution ")).expect("the distribution line");
        let rest = line.split(" on port ").nth(1).unwrap();
        rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap()
    }

    fn call_json(&self, name: &str, json: &str) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_relive"))
            .args(["call", "--root", self.root.to_str().unwrap(), name, json])
            .output()
            .unwrap();
        assert!(out.status.success(), "relive call failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("a JSON reply")
    }
}

impl Drop for ReliveNode {
    fn drop(&mut self) {
        if self.pid == 0 || !alive(self.pid) {
            return;
        }
        let _ = Command::new(env!("CARGO_BIN_EXE_relive"))
            .args(["node", "stop", "--root", self.root.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(self.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive(self.pid) {
            signal(self.pid, "9");
        }
    }
}

/// The next line starting with `prefix` within `timeout`.
fn line(rx: &mpsc::Receiver<String>, prefix: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.starts_with(prefix) => return line,
            Ok(_) => continue,
            Err(_) => panic!("erl printed no line starting with {prefix:?} within {timeout:?}"),
        }
    }
}

const SHORT: Duration = Duration::from_secs(30);

#[test]
fn erl_pings_calls_monitors_and_links_a_relive_node_and_sees_it_die() {
    let Some(world) = World::new(true) else { return };
    let node = world.relive("relive_a", &[]);
    let n = &node.name;

    // A wrong cookie: pang, and a line on our side naming the peer.
    let script = format!(r#"io:format("ping ~p~n", [net_adm:ping('{n}')]), halt()."#);
    let (_intruder, out) = world.erl("intruder", "WRONG", &[], &script);
    assert_eq!(line(&out, "ping", SHORT), "ping pang");
    wait_until("the refusal is logged", SHORT, || {
        node.log().lines().any(|l| {
            l.contains("refused a distribution connection from intruder@")
                && l.contains("cookie does not match")
        })
    });

    let script = format!(
        r#"
        N = '{n}',
        Out = fun(F, A) -> io:format(F ++ "~n", A) end,
        Out("ping ~p", [net_adm:ping(N)]),
        register(erl_box, self()),
        {{dist_echo, N}} ! {{bounce, erl_box, node(), <<"hi">>}},
        receive #{{<<"reply">> := M1}} -> Out("bounced ~s", [M1]) after 10000 -> Out("bounced none", []) end,
        Out("call ~p", [gen_server:call({{dist_echo, N}}, {{echo, <<"hello">>}})]),
        {{'EXIT', {{Why, _}}}} = (catch gen_server:call({{nobody, N}}, x, 5000)),
        Out("missing ~p", [Why]),
        EchoPid = gen_server:call({{dist_echo, N}}, whoami),
        Out("whoami ~p", [is_pid(EchoPid) andalso node(EchoPid) =:= N]),
        process_flag(trap_exit, true),
        link(EchoPid),
        Ref = erlang:monitor(process, EchoPid),
        true = gen_server:call({{dist_echo, N}}, {{stop, <<"bye">>}}),
        receive {{'EXIT', EchoPid, R1}} -> Out("exit ~p", [R1]) after 10000 -> Out("exit none", []) end,
        receive {{'DOWN', Ref, process, EchoPid, R2}} -> Out("down ~p", [R2]) after 10000 -> Out("down none", []) end,
        Wait = fun W(0) -> none; W(K) ->
            case catch gen_server:call({{dist_echo, N}}, whoami, 1000) of
                P when is_pid(P), P =/= EchoPid -> P;
                _ -> timer:sleep(100), W(K - 1)
            end end,
        Echo2 = Wait(100),
        P1 = spawn(fun() -> receive go -> exit(boom) end end),
        P2 = spawn(fun() -> receive go -> exit(done) end end),
        P3 = spawn(fun() -> receive go -> exit(late) end end),
        true = gen_server:call({{dist_echo, N}}, {{link, P1}}),
        true = gen_server:call({{dist_echo, N}}, {{monitor, P2}}),
        true = gen_server:call({{dist_echo, N}}, {{link, P3}}),
        Out("p1 linked ~p", [lists:member(Echo2, element(2, process_info(P1, links)))]),
        true = gen_server:call({{dist_echo, N}}, {{unlink, P3}}),
        P1 ! go, P2 ! go, P3 ! go,
        Replies = fun R(0) -> gen_server:call({{dist_echo, N}}, replies); R(K) ->
            case gen_server:call({{dist_echo, N}}, replies) of
                L when length(L) >= 2 -> timer:sleep(300), gen_server:call({{dist_echo, N}}, replies);
                _ -> timer:sleep(100), R(K - 1)
            end end,
        Out("replies ~p", [lists:sort(Replies(100))]),
        Srv = spawn(fun S() -> receive {{'$gen_call', {{F, T}}, R}} -> F ! {{T, {{ok, R}}}}, S() end end),
        Out("relayed ~p", [gen_server:call({{dist_echo, N}}, {{call_pid, Srv, <<"x">>}})]),
        monitor_node(N, true),
        Ref3 = erlang:monitor(process, Echo2),
        Out("kill_now", []),
        receive {{nodedown, N}} -> Out("nodedown", []) after 60000 -> Out("nodedown none", []) end,
        receive {{'DOWN', Ref3, process, _, R3}} -> Out("down2 ~p", [R3]) after 10000 -> Out("down2 none", []) end,
        halt().
        "#
    );
    let (_erl, out) = world.erl("erl_a", &world.epmd.cookie, &[], &script);
    assert_eq!(line(&out, "ping", SHORT), "ping pong");
    assert_eq!(line(&out, "bounced", SHORT), "bounced hi", "echo through a registered relive process");
    assert_eq!(line(&out, "call", SHORT), "call <<\"hello\">>", "gen_server:call to a module process");
    assert_eq!(line(&out, "missing", SHORT), "missing noproc");
    assert_eq!(line(&out, "whoami", SHORT), "whoami true", "a module's pid reaches erl as a pid");
    assert_eq!(line(&out, "exit", SHORT), "exit bye", "erl's link to the relive process");
    assert_eq!(line(&out, "down", SHORT), "down bye", "erl's monitor of the relive process");
    assert_eq!(
        line(&out, "p1 linked", SHORT),
        "p1 linked true",
        "the relive process's link to an erl process"
    );
    assert_eq!(
        line(&out, "replies", SHORT),
        "replies [<<\"down done\">>,<<\"exit boom\">>]",
        "an exit through the link, a down through the monitor, nothing through the removed link"
    );
    assert_eq!(line(&out, "relayed", SHORT), "relayed <<\"x\">>", "a module calls an erl process by pid");
    line(&out, "kill_now", SHORT);
    signal(node.pid, "9");
    assert_eq!(line(&out, "nodedown", Duration::from_secs(90)), "nodedown");
    assert_eq!(line(&out, "down2", SHORT), "down2 noconnection");
}

#[test]
fn an_idle_connection_with_net_ticktime_4_stays_up_for_15_seconds() {
    let Some(world) = World::new(true) else { return };
    let node = world.relive("relive_t", &["--net-ticktime", "4"]);
    let n = &node.name;
    let script = format!(
        r#"
        N = '{n}',
        pong = net_adm:ping(N),
        monitor_node(N, true),
        receive {{nodedown, N}} -> io:format("result nodedown~n") after 15000 ->
            io:format("result ~p~n", [lists:member(N, nodes(hidden))])
        end,
        halt().
        "#
    );
    let (_erl, out) = world.erl("erl_t", &world.epmd.cookie, &["-kernel", "net_ticktime", "4"], &script);
    assert_eq!(line(&out, "result", Duration::from_secs(60)), "result true");
    // erl halts once it has printed: only a tick timeout would be ours.
    assert!(!node.log().contains("tick timeout"), "the node timed the connection out: {}", node.log());
}

#[test]
fn relive_sends_to_a_name_erl_registered_and_gets_the_reply() {
    let Some(world) = World::new(true) else { return };
    let node = world.relive("relive_s", &[]);
    let script = r#"
        register(erl_echo, spawn(fun Loop() ->
            receive #{<<"bounce">> := [Name, Node, Text]} ->
                {binary_to_atom(Name), binary_to_atom(Node)} ! {reply, <<"erl saw ", Text/binary>>}, Loop()
            end end)),
        io:format("ready~n"),
        receive after 60000 -> ok end,
        halt().
    "#;
    let (_erl, out) = world.erl("erl_s", &world.epmd.cookie, &[], script);
    line(&out, "ready", SHORT);
    let ask = serde_json::json!({"ask": {"name": "erl_echo", "node": world.full("erl_s"), "reply_node": node.name, "text": "ping"}});
    assert_eq!(node.call_json("dist_echo", &ask.to_string()), serde_json::json!(true));
    wait_until("the reply reaches the relive process", SHORT, || {
        node.call_json("dist_echo", r#""replies""#) == serde_json::json!(["erl saw ping"])
    });
}

#[test]
fn two_relive_nodes_message_each_other_without_erl() {
    let Some(world) = World::new(false) else { return };
    let a = world.relive("relive_x", &[]);
    let b = world.relive("relive_y", &[]);
    let ask = serde_json::json!({"ask": {"name": "dist_echo", "node": b.name, "reply_node": a.name, "text": "over"}});
    assert_eq!(a.call_json("dist_echo", &ask.to_string()), serde_json::json!(true));
    wait_until("b's answer reaches a", SHORT, || {
        a.call_json("dist_echo", r#""replies""#) == serde_json::json!(["over"])
    });
    // `relive status` names the node and its connections.
    let status = Command::new(env!("CARGO_BIN_EXE_relive"))
        .args(["status", "--root", a.root.to_str().unwrap()])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(status.contains(&format!("distribution: {} (connected: {})", a.name, b.name)), "{status}");
    // A call from a third, hidden node (relive-dist's client API).
    let client = world.client("cli");
    let reply = client
        .call(
            &b.name,
            "dist_echo",
            relive_dist::term::tuple(vec![relive_dist::term::atom("echo"), relive_dist::term::binary("hi")]),
            SHORT,
        )
        .unwrap();
    assert_eq!(reply, relive_dist::term::binary("hi"));
    client.stop();
}

/// A peer that speaks the handshake by hand (erl_dist's client side) with
/// the world's cookie and chosen flags; the stream after it.
fn handshake(world: &World, port: u16, name: &str, flags: erl_dist::DistributionFlags) -> TcpStream {
    use erl_dist::handshake::ClientSideHandshake;
    use erl_dist::node::{Creation, LocalNode};
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(SHORT)).unwrap();
    let mut local = LocalNode::new(world.full(name).parse().unwrap(), Creation::new(7));
    local.flags = flags;
    let io = futures::io::AllowStdIo::new(stream.try_clone().unwrap());
    let mut shake = ClientSideHandshake::new(io, local, &world.epmd.cookie);
    futures::executor::block_on(async {
        shake.execute_send_name(erl_dist::LOWEST_DISTRIBUTION_PROTOCOL_VERSION).await.unwrap();
        shake.execute_rest(true).await
    })
    .map(|_| ())
    .unwrap_or_else(|e| eprintln!("handshake ended: {e}"));
    stream
}

/// The peer closed the connection (reads end) within the timeout.
fn closed(mut stream: TcpStream) -> bool {
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + SHORT;
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue,
        }
    }
    false
}

#[test]
fn bad_input_closes_the_connection_with_a_log_line_and_the_node_keeps_running() {
    let Some(world) = World::new(false) else { return };
    let node = world.relive("relive_b", &[]);
    let port = node.port();
    let full = erl_dist::DistributionFlags::mandatory()
        | erl_dist::DistributionFlags::DIST_MONITOR
        | erl_dist::DistributionFlags::DIST_MONITOR_NAME;

    // Garbage instead of a handshake.
    let mut garbage = TcpStream::connect(("127.0.0.1", port)).unwrap();
    garbage.set_read_timeout(Some(SHORT)).unwrap();
    garbage.write_all(&[0x00, 0x05, b'X', 1, 2, 3, 4, 0xff, 0xfe]).unwrap();
    assert!(closed(garbage), "garbage: the connection stays open");

    // A handshake without mandatory flags (no UTF8_ATOMS, no MAP_TAGS).
    let lacking = erl_dist::DistributionFlags::from_bits_truncate(
        full.bits()
            & !erl_dist::DistributionFlags::UTF8_ATOMS.bits()
            & !erl_dist::DistributionFlags::MAP_TAGS.bits(),
    );
    assert!(closed(handshake(&world, port, "flagless", lacking)), "missing flags: the connection stays open");

    // After a good handshake: a frame far over the limit, then an unknown
    // control message on another connection.
    let mut big = handshake(&world, port, "bigframe", full);
    big.write_all(&[0x7f, 0xff, 0xff, 0xff, 112, 131]).unwrap();
    assert!(closed(big), "oversized frame: the connection stays open");
    let mut unknown = handshake(&world, port, "unknownop", full);
    // {99}: a tuple of one small integer, an operation no version defines.
    unknown.write_all(&[0, 0, 0, 6, 112, 131, 104, 1, 97, 99]).unwrap();
    assert!(closed(unknown), "unknown control message: the connection stays open");

    wait_until("a log line for each", SHORT, || {
        let log = node.log();
        log.contains("refused a distribution connection from a peer at")
            && log.contains("flagless@")
            && log.contains("lacks mandatory distribution flags: UTF8_ATOMS, MAP_TAGS")
            && log.contains("connection to bigframe@")
            && log.contains("over the limit")
            && log.contains("connection to unknownop@")
            && log.contains("unknown control message (operation 99)")
    });

    // The node still serves other nodes, and its control socket.
    assert!(alive(node.pid));
    let client = world.client("after");
    let reply = client
        .call(
            &node.name,
            "dist_echo",
            relive_dist::term::tuple(vec![
                relive_dist::term::atom("echo"),
                relive_dist::term::binary("still here"),
            ]),
            SHORT,
        )
        .unwrap();
    assert_eq!(reply, relive_dist::term::binary("still here"));
    assert_eq!(node.call_json("dist_echo", r#""replies""#), serde_json::json!([]));
    client.stop();
}
