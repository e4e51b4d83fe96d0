//! The kv example module (examples/kv-1.0.0, examples/kv-1.1.0) against real
//! TCP clients speaking RESP2: a module process that owns a listener and
//! every connection through the port host services (ABI 2), answering
//! requests split across reads and pipelined by the thousand; the stock
//! redis-cli when the machine has it; and a client whose connection stays
//! open while the process moves from 1.0.0 to 1.1.0 and back.

mod support;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use relive_runtime::{Node, Pid};
use serde_json::{Value, json};
use support::{node_with_code, payload};

const T: Duration = Duration::from_secs(5);

/// A RESP2 reply, as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

fn bulk(text: &str) -> Reply {
    Reply::Bulk(Some(text.as_bytes().to_vec()))
}

fn ok() -> Reply {
    Reply::Simple("OK".into())
}

const NIL: Reply = Reply::Bulk(None);

struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: &str) -> Client {
        let stream = TcpStream::connect(addr).expect("connecting to kv");
        stream.set_read_timeout(Some(T)).unwrap();
        stream.set_write_timeout(Some(T)).unwrap();
        Client { stream: BufReader::new(stream) }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).expect("writing to kv");
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stream.read_line(&mut line).expect("reading a reply line");
        assert!(line.ends_with("\r\n"), "reply line {line:?} does not end with CRLF");
        line.truncate(line.len() - 2);
        line
    }

    fn read(&mut self) -> Reply {
        let line = self.line();
        let (kind, rest) = line.split_at(1);
        match kind {
            "+" => Reply::Simple(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Int(rest.parse().expect("an integer reply")),
            "$" => {
                let len: i64 = rest.parse().expect("a bulk length");
                if len < 0 {
                    return NIL;
                }
                let mut bytes = vec![0; len as usize + 2];
                self.stream.read_exact(&mut bytes).expect("reading a bulk string");
                assert_eq!(&bytes[len as usize..], b"\r\n");
                bytes.truncate(len as usize);
                Reply::Bulk(Some(bytes))
            }
            "*" => {
                let len: i64 = rest.parse().expect("an array length");
                Reply::Array((0..len.max(0)).map(|_| self.read()).collect())
            }
            _ => panic!("not a RESP reply: {line:?}"),
        }
    }

    /// Sends one request as an array of bulk strings and reads its reply.
    fn request(&mut self, args: &[&str]) -> Reply {
        self.write(&encode(args));
        self.read()
    }

    /// True once kv has closed the connection.
    fn sees_close(&mut self) -> bool {
        let mut buf = [0u8; 64];
        match self.stream.read(&mut buf) {
            Ok(0) => true,
            Ok(n) => {
                panic!("expected the connection to close, read {:?}", String::from_utf8_lossy(&buf[..n]))
            }
            Err(err) => matches!(err.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted),
        }
    }
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    out
}

/// Loads kv 1.0.0 into a fresh node and starts it on a free port; the
/// node, its code directory, the process and the address it listens on.
fn start_kv() -> (Node, tempfile::TempDir, Pid, String) {
    let (node, dir) = node_with_code();
    let code = node.code_server().unwrap();
    code.load(&support::library("kv-v1")).expect("loading kv 1.0.0");
    let pid = node.spawn_module("kv", payload(json!({"listen": "127.0.0.1:0"})), T).expect("starting kv");
    let addr = call(&node, pid, json!("Addr")).as_str().expect("Addr answers a string").to_string();
    assert!(!addr.ends_with(":0"), "kv reports the port it really got: {addr}");
    (node, dir, pid, addr)
}

fn call(node: &Node, pid: Pid, request: Value) -> Value {
    node.call_json(pid, &request, T).unwrap_or_else(|e| panic!("kv answers {request}: {e}"))
}

/// Waits until `check` holds (events reach kv asynchronously).
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn ping_set_get_del_over_resp() {
    let (node, _dir, pid, addr) = start_kv();
    let mut c = Client::connect(&addr);
    assert_eq!(c.request(&["PING"]), Reply::Simple("PONG".into()));
    assert_eq!(c.request(&["ping", "hello there"]), bulk("hello there"));
    assert_eq!(c.request(&["SET", "a", "1"]), ok());
    assert_eq!(c.request(&["GET", "a"]), bulk("1"));
    assert_eq!(c.request(&["GET", "missing"]), NIL);
    assert_eq!(c.request(&["SET", "b", ""]), ok());
    assert_eq!(c.request(&["GET", "b"]), bulk(""), "an empty value is not a missing one");
    assert_eq!(c.request(&["SET", "a", "two words\r\nand a line"]), ok());
    assert_eq!(c.request(&["GET", "a"]), bulk("two words\r\nand a line"), "values are binary-safe");
    assert_eq!(c.request(&["EXISTS", "a", "b", "c"]), Reply::Int(2));
    assert_eq!(c.request(&["DBSIZE"]), Reply::Int(2));
    assert_eq!(call(&node, pid, json!({"Get": "b"})), json!(""));
    assert_eq!(call(&node, pid, json!("Keys")), json!(2));
    assert_eq!(c.request(&["DEL", "a", "b", "c"]), Reply::Int(2));
    assert_eq!(c.request(&["DEL", "a"]), Reply::Int(0));
    assert_eq!(c.request(&["GET", "a"]), NIL);
    assert_eq!(call(&node, pid, json!({"Get": "a"})), Value::Null);
    assert_eq!(call(&node, pid, json!("Keys")), json!(0));
    assert_eq!(call(&node, pid, json!("Version")), json!("1.0.0"));

    // Inline commands, as typed over telnet.
    c.write(b"PING\r\nset  x   42\nget x\r\n");
    assert_eq!(c.read(), Reply::Simple("PONG".into()));
    assert_eq!(c.read(), ok());
    assert_eq!(c.read(), bulk("42"));

    // What redis-cli and redis-benchmark ask before they start.
    assert_eq!(c.request(&["COMMAND", "DOCS"]), Reply::Array(vec![]));
    assert_eq!(
        c.request(&["CONFIG", "GET", "save"]),
        Reply::Array(vec![bulk("save"), bulk("")]),
        "redis-benchmark reads element 1 of this reply"
    );
    assert_eq!(
        c.request(&["CONFIG", "GET", "appendonly"]),
        Reply::Array(vec![bulk("appendonly"), bulk("no")])
    );
    assert_eq!(c.request(&["CONFIG", "GET", "nosuch"]), Reply::Array(vec![]));

    // Wrong arity and QUIT.
    assert_eq!(c.request(&["GET"]), Reply::Error("ERR wrong number of arguments for 'get' command".into()));
    assert_eq!(c.request(&["QUIT"]), ok());
    assert!(c.sees_close(), "QUIT closes the connection");
    eventually("kv forgot the closed connection", || call(&node, pid, json!("Connections")) == json!(0));
    node.shutdown();
}

#[test]
fn unknown_commands_get_an_error_and_the_connection_goes_on() {
    let (node, _dir, _pid, addr) = start_kv();
    let mut c = Client::connect(&addr);
    let Reply::Error(text) = c.request(&["FROB", "a", "b"]) else { panic!("an unknown command is an error") };
    assert!(text.starts_with("ERR unknown command 'FROB'"), "{text}");
    assert!(text.contains("'a' 'b'"), "{text}");
    c.write(b"nosuch\r\n");
    assert!(matches!(c.read(), Reply::Error(text) if text.starts_with("ERR unknown command 'nosuch'")));
    assert_eq!(c.request(&["PING"]), Reply::Simple("PONG".into()), "the connection still works");

    // Bytes that are not RESP: an error, then kv closes, as Redis does.
    c.write(b"*2\r\n+GET\r\n");
    assert!(matches!(c.read(), Reply::Error(text) if text.starts_with("ERR Protocol error")));
    assert!(c.sees_close());
    // kv itself is fine.
    let mut d = Client::connect(&addr);
    assert_eq!(d.request(&["PING"]), Reply::Simple("PONG".into()));
    node.shutdown();
}

#[test]
fn ten_thousand_pipelined_sets_in_one_write() {
    let (node, _dir, pid, addr) = start_kv();
    let mut c = Client::connect(&addr);
    const N: usize = 10_000;
    let mut batch = Vec::new();
    for i in 0..N {
        batch.extend_from_slice(&encode(&["SET", &format!("key:{i}"), &format!("value {i}")]));
    }
    // Write from another thread: kv answers while the batch still arrives,
    // and a client that only read after writing it all could deadlock on
    // full socket buffers.
    let mut writer = c.stream.get_ref().try_clone().unwrap();
    let write = thread::spawn(move || writer.write_all(&batch).expect("writing the batch"));
    for i in 0..N {
        let reply = c.read();
        assert_eq!(reply, ok(), "reply {i}");
    }
    write.join().unwrap();
    assert_eq!(call(&node, pid, json!("Keys")), json!(N));
    assert_eq!(c.request(&["GET", "key:9999"]), bulk("value 9999"));
    assert_eq!(call(&node, pid, json!({"Get": "key:0"})), json!("value 0"));

    // GETs pipelined with mixed commands, in one write: replies in order.
    let mut batch = Vec::new();
    for i in 0..1000 {
        batch.extend_from_slice(&encode(&["GET", &format!("key:{i}")]));
        batch.extend_from_slice(b"PING\r\n");
    }
    c.write(&batch);
    for i in 0..1000 {
        assert_eq!(c.read(), bulk(&format!("value {i}")));
        assert_eq!(c.read(), Reply::Simple("PONG".into()));
    }
    node.shutdown();
}

#[test]
fn a_request_split_across_writes_is_answered_once_whole() {
    let (node, _dir, pid, addr) = start_kv();
    let mut c = Client::connect(&addr);
    let set = encode(&["SET", "split", "across two writes"]);
    let (first, second) = set.split_at(13); // inside the second bulk string
    c.write(first);
    thread::sleep(Duration::from_millis(50));
    assert_eq!(call(&node, pid, json!("Requests")), json!(0), "half a request is not run");
    c.stream.get_ref().set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    assert!(
        matches!(c.stream.get_mut().read(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock),
        "no reply to half a request"
    );
    c.stream.get_ref().set_nonblocking(false).unwrap();
    c.write(second);
    assert_eq!(c.read(), ok());
    assert_eq!(c.request(&["GET", "split"]), bulk("across two writes"));

    // Byte by byte, two requests, the second's start sent with the first's
    // end.
    let mut bytes = encode(&["SET", "k", "v"]);
    bytes.extend_from_slice(&encode(&["GET", "k"]));
    for byte in &bytes {
        c.write(std::slice::from_ref(byte));
        thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(c.read(), ok());
    assert_eq!(c.read(), bulk("v"));
    // An inline command in pieces.
    c.write(b"PI");
    thread::sleep(Duration::from_millis(20));
    c.write(b"NG\r");
    thread::sleep(Duration::from_millis(20));
    c.write(b"\n");
    assert_eq!(c.read(), Reply::Simple("PONG".into()));
    node.shutdown();
}

#[test]
fn two_clients_at_once() {
    let (node, _dir, pid, addr) = start_kv();
    let clients: Vec<_> = (0..2)
        .map(|n| {
            let addr = addr.clone();
            thread::spawn(move || {
                let mut c = Client::connect(&addr);
                for i in 0..500 {
                    let key = format!("c{n}:{i}");
                    assert_eq!(c.request(&["SET", &key, &i.to_string()]), ok());
                    assert_eq!(c.request(&["GET", &key]), bulk(&i.to_string()));
                }
                c
            })
        })
        .collect();
    let mut clients: Vec<Client> = clients.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(call(&node, pid, json!("Connections")), json!(2));
    assert_eq!(call(&node, pid, json!("Keys")), json!(1000));
    // Each sees what the other wrote.
    assert_eq!(clients[0].request(&["GET", "c1:499"]), bulk("499"));
    assert_eq!(clients[1].request(&["GET", "c0:499"]), bulk("499"));
    drop(clients.pop());
    eventually("kv saw one client go", || call(&node, pid, json!("Connections")) == json!(1));
    assert_eq!(clients[0].request(&["PING"]), Reply::Simple("PONG".into()));
    node.shutdown();
}

#[test]
fn the_listener_and_connections_close_with_the_process() {
    let (node, _dir, pid, addr) = start_kv();
    let mut c = Client::connect(&addr);
    assert_eq!(c.request(&["PING"]), Reply::Simple("PONG".into()));
    assert_eq!(node.ports().len(), 2, "the listener and one connection");
    node.exit(pid, relive_runtime::ExitReason::Kill);
    assert!(c.sees_close(), "its connections close when kv exits");
    eventually("every port closed", || node.ports().is_empty());
    assert!(TcpStream::connect(&addr).is_err(), "and its listener");
    node.shutdown();
}

#[test]
fn a_bad_listen_address_fails_init() {
    let (node, _dir) = node_with_code();
    node.code_server().unwrap().load(&support::library("kv-v1")).unwrap();
    let error = node.spawn_module("kv", payload(json!({"listen": "not an address"})), T).unwrap_err();
    assert!(error.to_string().contains("not an address"), "{error}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let error = node.spawn_module("kv", payload(json!({"listen": addr})), T).unwrap_err();
    assert!(error.to_string().contains("cannot listen"), "{error}");
    node.shutdown();
}

/// redis-cli from Debian's redis-tools, if the machine has it.
fn redis_tool(name: &str) -> Option<std::path::PathBuf> {
    let found = Command::new("which").arg(name).output().ok()?;
    if !found.status.success() {
        eprintln!("note: {name} is not installed (Debian package redis-tools); skipping that part");
        return None;
    }
    Some(String::from_utf8_lossy(&found.stdout).trim().into())
}

#[test]
fn redis_cli_works_against_kv() {
    let Some(cli) = redis_tool("redis-cli") else { return };
    let (node, _dir, pid, addr) = start_kv();
    let port = addr.rsplit(':').next().unwrap();
    let run = |args: &[&str]| {
        let output = Command::new(&cli).args(["-h", "127.0.0.1", "-p", port]).args(args).output().unwrap();
        assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    assert_eq!(run(&["set", "a", "1"]), "OK");
    assert_eq!(run(&["get", "a"]), "1");
    assert_eq!(run(&["ping"]), "PONG");
    assert_eq!(run(&["del", "a"]), "1");
    assert_eq!(run(&["get", "a"]), "");
    assert!(run(&["frob"]).contains("ERR unknown command 'frob'"));
    assert_eq!(call(&node, pid, json!("Keys")), json!(0));
    node.shutdown();
}

#[test]
fn redis_benchmark_runs_against_kv_without_errors() {
    let Some(bench) = redis_tool("redis-benchmark") else { return };
    let (node, _dir, _pid, addr) = start_kv();
    let port = addr.rsplit(':').next().unwrap();
    let output = Command::new(&bench)
        .args(["-h", "127.0.0.1", "-p", port, "-t", "set,get", "-n", "20000", "-c", "10", "-P", "16", "-q"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "redis-benchmark failed: {stdout}\n{stderr}");
    assert!(stdout.contains("SET") && stdout.contains("GET"), "{stdout}\n{stderr}");
    assert!(!stderr.contains("ERR") && !stdout.contains("ERR"), "{stdout}\n{stderr}");
    assert!(!stderr.contains("Could not fetch server CONFIG"), "CONFIG GET is answered: {stderr}");
    eprintln!("redis-benchmark against kv 1.0.0 (a debug-built runtime):\n{stdout}");
    node.shutdown();
}

// ---------------------------------------------------------------------------
// Upgrades: kv 1.0.0 → 1.1.0 (values gain an expiry) and back, live.

/// Moves kv to `version` of its module (loaded: current or old).
fn move_kv(node: &Node, pid: Pid, version: &str) {
    let code = node.code_server().unwrap();
    let to = [code.current("kv"), code.old("kv")]
        .into_iter()
        .flatten()
        .find(|c| c.version().to_string() == version)
        .unwrap_or_else(|| panic!("kv {version} is loaded"));
    code.upgrade_process(node, pid, &to, &[], T).unwrap_or_else(|e| panic!("moving kv to {version}: {e}"));
    assert_eq!(call(node, pid, json!("Version")), json!(version));
}

#[test]
fn a_connection_stays_open_across_an_upgrade_and_a_downgrade() {
    let (node, _dir, pid, addr) = start_kv();
    let mut c = Client::connect(&addr);
    assert_eq!(c.request(&["SET", "a", "1"]), ok());
    assert_eq!(c.request(&["SET", "n", "5"]), ok());
    let Reply::Error(text) = c.request(&["INCR", "n"]) else { panic!("1.0.0 has no INCR") };
    assert!(text.starts_with("ERR unknown command 'INCR'"), "{text}");

    // Half a request is in kv's state when it moves.
    let set = encode(&["SET", "half", "sent before the upgrade"]);
    let (first, second) = set.split_at(20);
    c.write(first);
    thread::sleep(Duration::from_millis(50));
    let requests = call(&node, pid, json!("Requests"));

    node.code_server().unwrap().load(&support::library("kv-v2")).expect("loading kv 1.1.0");
    assert_eq!(call(&node, pid, json!("Version")), json!("1.0.0"), "loading moves no process");
    move_kv(&node, pid, "1.1.0");
    assert_eq!(call(&node, pid, json!("Requests")), requests, "the state came along");
    assert_eq!(call(&node, pid, json!("Connections")), json!(1));

    // The same connection: the rest of the request, then the new commands.
    c.write(second);
    assert_eq!(c.read(), ok());
    assert_eq!(c.request(&["GET", "half"]), bulk("sent before the upgrade"));
    assert_eq!(c.request(&["GET", "a"]), bulk("1"), "1.0.0's values were converted");
    assert_eq!(c.request(&["INCR", "n"]), Reply::Int(6));
    assert_eq!(c.request(&["INCR", "fresh"]), Reply::Int(1));
    assert!(matches!(c.request(&["INCR", "half"]), Reply::Error(t) if t.contains("not an integer")));
    assert_eq!(c.request(&["TTL", "n"]), Reply::Int(-1));
    assert_eq!(c.request(&["TTL", "nosuch"]), Reply::Int(-2));
    assert_eq!(c.request(&["SET", "t", "v", "EX", "100"]), ok());
    assert_eq!(c.request(&["TTL", "t"]), Reply::Int(100));
    assert_eq!(c.request(&["EXPIRE", "a", "50"]), Reply::Int(1));
    assert_eq!(c.request(&["EXPIRE", "nosuch", "50"]), Reply::Int(0));
    assert_eq!(c.request(&["SET", "short", "v", "PX", "100"]), ok());
    assert_eq!(
        c.request(&["SET", "bad", "v", "EX", "soon"]),
        Reply::Error("ERR value is not an integer or out of range".into())
    );
    assert_eq!(c.request(&["SET", "bad", "v", "XX"]), Reply::Error("ERR syntax error".into()));
    let ttl = call(&node, pid, json!({"Ttl": "a"})).as_i64().unwrap();
    assert!((49_000..=50_000).contains(&ttl), "{ttl}");
    thread::sleep(Duration::from_millis(150));
    assert_eq!(c.request(&["GET", "short"]), NIL, "expired");
    assert_eq!(c.request(&["EXISTS", "short"]), Reply::Int(0));

    // A second client joins on 1.1.0.
    let mut d = Client::connect(&addr);
    assert_eq!(d.request(&["INCR", "n"]), Reply::Int(7));

    // Back to 1.0.0 (downgrade): both connections stay, values stay (their
    // expiries are gone: 1.0.0 has none), INCR is gone again.
    move_kv(&node, pid, "1.0.0");
    assert_eq!(call(&node, pid, json!("Connections")), json!(2));
    assert_eq!(c.request(&["GET", "n"]), bulk("7"));
    assert_eq!(d.request(&["GET", "t"]), bulk("v"));
    assert_eq!(d.request(&["GET", "a"]), bulk("1"));
    assert!(matches!(c.request(&["TTL", "t"]), Reply::Error(t) if t.starts_with("ERR unknown command")));
    assert!(matches!(d.request(&["INCR", "n"]), Reply::Error(t) if t.starts_with("ERR unknown command")));

    // And up again.
    move_kv(&node, pid, "1.1.0");
    assert_eq!(c.request(&["INCR", "n"]), Reply::Int(8));
    assert_eq!(d.request(&["TTL", "t"]), Reply::Int(-1));
    node.shutdown();
}

#[test]
fn pipelined_traffic_through_an_upgrade_loses_nothing() {
    let (node, _dir, pid, addr) = start_kv();
    node.code_server().unwrap().load(&support::library("kv-v2")).unwrap();
    // kv was started before 1.1.0 was loaded: it runs 1.0.0, now old.
    assert_eq!(call(&node, pid, json!("Version")), json!("1.0.0"));
    let mut c = Client::connect(&addr);
    const BATCHES: usize = 40;
    const PER_BATCH: usize = 500;
    let mut writer = c.stream.get_ref().try_clone().unwrap();
    let write = thread::spawn(move || {
        for b in 0..BATCHES {
            let mut batch = Vec::new();
            for i in 0..PER_BATCH {
                batch.extend_from_slice(&encode(&["SET", &format!("k{b}:{i}"), "x"]));
            }
            writer.write_all(&batch).unwrap();
            thread::sleep(Duration::from_millis(2));
        }
    });
    let mut moved = false;
    for i in 0..BATCHES * PER_BATCH {
        assert_eq!(c.read(), ok(), "reply {i}");
        if i == BATCHES * PER_BATCH / 3 {
            move_kv(&node, pid, "1.1.0");
            moved = true;
        }
    }
    write.join().unwrap();
    assert!(moved);
    assert_eq!(call(&node, pid, json!("Keys")), json!(BATCHES * PER_BATCH));
    assert_eq!(c.request(&["INCR", "counter"]), Reply::Int(1));
    node.shutdown();
}

#[test]
fn redis_benchmark_runs_through_a_live_upgrade_without_errors() {
    let Some(bench) = redis_tool("redis-benchmark") else { return };
    let (node, _dir, pid, addr) = start_kv();
    node.code_server().unwrap().load(&support::library("kv-v2")).unwrap();
    let port = addr.rsplit(':').next().unwrap().to_string();
    const N: u64 = 200_000;
    // redis-benchmark 7 exits with an error at the first error reply or
    // dropped connection.
    let run = thread::spawn(move || {
        Command::new(&bench)
            .args(["-h", "127.0.0.1", "-p", &port, "-t", "set,get", "-c", "20", "-P", "16", "-q"])
            .args(["-n", &N.to_string()])
            .output()
            .unwrap()
    });
    eventually("redis-benchmark is under way", || {
        call(&node, pid, json!("Requests")).as_u64().unwrap() > N / 10
    });
    move_kv(&node, pid, "1.1.0");
    let during = call(&node, pid, json!("Requests")).as_u64().unwrap();
    let output = run.join().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "redis-benchmark failed: {stdout}\n{stderr}");
    assert!(!stdout.contains("Error") && !stderr.contains("Error"), "{stdout}\n{stderr}");
    let total = call(&node, pid, json!("Requests")).as_u64().unwrap();
    assert!(during < total, "the upgrade happened while requests kept coming ({during} of {total})");
    assert!(total >= 2 * N, "every request was answered: {total}");
    eprintln!("redis-benchmark through kv 1.0.0 -> 1.1.0 (moved after {during} requests):\n{stdout}");
    node.shutdown();
}
