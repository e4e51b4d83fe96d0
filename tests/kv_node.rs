//! The kv application (examples/releases/kv-*) on a node, through the
//! `relive` binary, with RESP clients connected the whole time:
//! 1.0.0 booted, 1.1.0 deployed live (INCR appears, values kept, the
//! sweeper module and process added), 1.2.0-broken refused by its own
//! code_change (the node stays on 1.1.0), 2.0.0 deployed (INFO answered by
//! the new stats module, the sweeper removed), then rolled back to 1.1.0.
//! Clients hammering SET/GET through every change see no error and no
//! dropped connection; `redis-benchmark`, when installed, runs through a
//! live 1.1.0 → 2.0.0 deploy without an error.
//!
//! Each test builds its own copies of the release manifests with a free
//! port in place of 6380 (the examples' port) and absolute crate paths.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{NodeGuard, failure, free_port, kv_archive, ok};

fn release_version(status: &Value) -> String {
    status["release"]["version"].as_str().unwrap_or_default().to_string()
}

/// A module's entry in `status --json`, if the node knows it.
fn module<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["modules"].as_array().unwrap().iter().find(|m| m["name"] == name)
}

/// The version a module's current code has, if it has current code.
fn current_version(status: &Value, name: &str) -> Option<String> {
    module(status, name).and_then(|m| m["current"]["version"].as_str()).map(str::to_string)
}

/// Whether a process of the release's supervisor runs under `name` (the
/// status groups them by their `[[process]]`).
fn running(status: &Value, name: &str) -> bool {
    status["processes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["children"].as_array().unwrap())
        .any(|p| p["name"] == name && p["pid"].is_string())
}

// ------------------------------------------------------------ a RESP client

/// A RESP2 reply.
#[derive(Debug, PartialEq, Eq)]
enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
}

impl Resp {
    fn bulk(text: &str) -> Resp {
        Resp::Bulk(Some(text.as_bytes().to_vec()))
    }

    fn ok() -> Resp {
        Resp::Simple("OK".into())
    }

    fn text(&self) -> String {
        match self {
            Resp::Bulk(Some(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            other => panic!("expected a bulk string, got {other:?}"),
        }
    }
}

/// One connection, raw RESP over a std TcpStream.
struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to kv");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.set_nodelay(true).unwrap();
        Client { writer: stream.try_clone().unwrap(), reader: BufReader::new(stream) }
    }

    fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Sends every request in one write, then reads one reply each.
    fn pipeline(&mut self, requests: &[Vec<Vec<u8>>]) -> std::io::Result<Vec<Resp>> {
        let mut out = Vec::new();
        for request in requests {
            let args: Vec<&[u8]> = request.iter().map(Vec::as_slice).collect();
            Client::encode(&args, &mut out);
        }
        self.writer.write_all(&out)?;
        requests.iter().map(|_| self.read()).collect()
    }

    fn try_cmd(&mut self, args: &[&str]) -> std::io::Result<Resp> {
        let mut out = Vec::new();
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        Client::encode(&args, &mut out);
        self.writer.write_all(&out)?;
        self.read()
    }

    fn cmd(&mut self, args: &[&str]) -> Resp {
        self.try_cmd(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        if !line.ends_with("\r\n") {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad line {line:?}")));
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }

    fn read(&mut self) -> std::io::Result<Resp> {
        let line = self.line()?;
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad reply line {line:?}"));
        let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
        let number = || rest.parse::<i64>().map_err(|_| bad());
        Ok(match kind {
            "+" => Resp::Simple(rest.to_string()),
            "-" => Resp::Error(rest.to_string()),
            ":" => Resp::Int(number()?),
            "$" => match number()? {
                -1 => Resp::Bulk(None),
                n => {
                    let mut bytes = vec![0; n as usize + 2];
                    self.reader.read_exact(&mut bytes)?;
                    bytes.truncate(n as usize);
                    Resp::Bulk(Some(bytes))
                }
            },
            "*" => {
                let n = number()?;
                let mut items = Vec::new();
                for _ in 0..n.max(0) {
                    items.push(self.read()?);
                }
                Resp::Array(items)
            }
            _ => return Err(bad()),
        })
    }
}

// ------------------------------------------------------- clients hammering

/// What the hammering clients saw.
#[derive(Default)]
struct Tally {
    /// Requests answered as expected.
    ok: AtomicU64,
    /// Requests answered with an error or a wrong value.
    errors: AtomicU64,
    /// Connections that failed (closed, reset, timed out).
    dropped: AtomicU64,
    /// The first problems, for the failure message.
    problems: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn problem(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::SeqCst);
        let mut problems = self.problems.lock().unwrap();
        if problems.len() < 10 {
            problems.push(what);
        }
    }
}

/// `threads` clients, each on one connection for its whole life, doing
/// SET then GET of their own keys until `stop`; half of them pipeline 16
/// SETs and 16 GETs per write. A wrong reply counts as an error; a failed
/// connection as dropped (and the client reconnects, to go on counting).
fn hammer(port: u16, threads: usize, stop: Arc<AtomicBool>, tally: Arc<Tally>) -> Vec<JoinHandle<()>> {
    (0..threads)
        .map(|t| {
            let (stop, tally) = (stop.clone(), tally.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect(port);
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let batch = if t % 2 == 0 { 1 } else { 16 };
                    let keys: Vec<String> = (0..batch).map(|i| format!("h{t}-{}", (n + i) % 500)).collect();
                    let values: Vec<String> = (0..batch).map(|i| format!("v{}", n + i)).collect();
                    let mut requests: Vec<Vec<Vec<u8>>> = keys
                        .iter()
                        .zip(&values)
                        .map(|(k, v)| vec![b"SET".to_vec(), k.clone().into_bytes(), v.clone().into_bytes()])
                        .collect();
                    requests.extend(keys.iter().map(|k| vec![b"GET".to_vec(), k.clone().into_bytes()]));
                    n += batch;
                    match client.pipeline(&requests) {
                        Ok(replies) => {
                            let (sets, gets) = replies.split_at(keys.len());
                            for (i, reply) in sets.iter().enumerate() {
                                if *reply == Resp::ok() {
                                    tally.ok.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    tally.problem(&tally.errors, format!("SET {}: {reply:?}", keys[i]));
                                }
                            }
                            for (i, reply) in gets.iter().enumerate() {
                                if *reply == Resp::bulk(&values[i]) {
                                    tally.ok.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    tally.problem(&tally.errors, format!("GET {}: {reply:?}", keys[i]));
                                }
                            }
                        }
                        Err(e) => {
                            tally.problem(&tally.dropped, format!("client {t}: {e}"));
                            client = Client::connect(port);
                        }
                    }
                }
            })
        })
        .collect()
}

/// Requests answered so far, waiting until it grew past `after`: the
/// clients are really running.
fn progressed(tally: &Tally, after: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = tally.ok.load(Ordering::SeqCst);
        if now > after + 100 {
            return now;
        }
        assert!(Instant::now() < deadline, "the hammering clients made no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn kv_upgrades_live_refuses_a_broken_release_and_rolls_back_with_clients_connected() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let [v100, v110, v120, v200] =
        ["1.0.0", "1.1.0", "1.2.0-broken", "2.0.0"].map(|version| kv_archive(version, port, dir.path()));
    let node = NodeGuard::start(&dir.path().join("node"), &["--boot", v100.to_str().unwrap()]);
    let r = node.root();
    let started = Instant::now();

    // kv 1.0.0: a client that stays connected throughout.
    let mut client = Client::connect(port);
    assert_eq!(client.cmd(&["PING"]), Resp::Simple("PONG".into()));
    assert_eq!(client.cmd(&["SET", "greeting", "hello"]), Resp::ok());
    assert_eq!(client.cmd(&["SET", "counter", "41"]), Resp::ok());
    assert!(matches!(client.cmd(&["INCR", "counter"]), Resp::Error(e) if e.contains("unknown command")));
    let status = node.status();
    assert_eq!(release_version(&status), "1.0.0");
    assert_eq!(current_version(&status, "kv").as_deref(), Some("1.0.0"));
    assert!(module(&status, "sweeper").is_none(), "{status}");

    // Clients hammering SET/GET through every change from here on.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let hammers = hammer(port, 4, stop.clone(), tally.clone());
    let mut seen = progressed(&tally, 0);

    // 1.1.0, live, with a health window: values kept, INCR works, the
    // sweeper runs.
    let out = ok(&["deploy", v110.to_str().unwrap(), "--root", r, "--health-window", "300ms"]);
    assert!(out.contains("kv 1.1.0 runs now"), "{out}");
    seen = progressed(&tally, seen);
    assert_eq!(client.cmd(&["GET", "greeting"]), Resp::bulk("hello"));
    assert_eq!(client.cmd(&["INCR", "counter"]), Resp::Int(42));
    assert_eq!(client.cmd(&["SET", "session", "s1", "EX", "100"]), Resp::ok());
    let status = node.status();
    assert_eq!(release_version(&status), "1.1.0");
    assert_eq!(status["last_report"]["outcome"], "committed", "{status}");
    assert_eq!(current_version(&status, "kv").as_deref(), Some("1.1.0"));
    assert_eq!(current_version(&status, "sweeper").as_deref(), Some("1.0.0"));
    assert!(running(&status, "sweeper"), "{status}");
    assert_eq!(node.call("sweeper", r#""Target""#), "kv");

    // 1.2.0-broken: its code_change refuses keys starting with "bad" or
    // containing a space; with such keys stored the deploy is aborted.
    assert_eq!(client.cmd(&["SET", "bad key", "x"]), Resp::ok());
    assert_eq!(client.cmd(&["SET", "bad:1", "y"]), Resp::ok());
    let err = failure(&["deploy", v120.to_str().unwrap(), "--root", r]);
    assert!(err.contains("of kv"), "the error names the module: {err}");
    assert!(err.contains("kv 1.2.0 cannot convert key \"bad key\""), "the error gives the reason: {err}");
    assert!(err.contains("still runs kv 1.1.0"), "{err}");
    seen = progressed(&tally, seen);
    let status = node.status();
    assert_eq!(release_version(&status), "1.1.0");
    assert_eq!(current_version(&status, "kv").as_deref(), Some("1.1.0"));
    assert!(running(&status, "sweeper"), "{status}");
    let report = &status["last_report"];
    assert!(report["outcome"].as_str().unwrap().starts_with("aborted"), "{report}");
    assert_eq!(client.cmd(&["GET", "bad key"]), Resp::bulk("x"));
    assert_eq!(client.cmd(&["INCR", "counter"]), Resp::Int(43));
    assert!(
        matches!(client.cmd(&["APPEND", "greeting", "!"]), Resp::Error(e) if e.contains("unknown command"))
    );

    // 2.0.0: the stats module answers INFO, the sweeper is gone, the
    // values (and their expiry) were converted.
    let out = ok(&["deploy", v200.to_str().unwrap(), "--root", r]);
    assert!(out.contains("kv 2.0.0 runs now"), "{out}");
    seen = progressed(&tally, seen);
    let status = node.status();
    assert_eq!(release_version(&status), "2.0.0");
    assert_eq!(current_version(&status, "kv").as_deref(), Some("2.0.0"));
    assert_eq!(current_version(&status, "stats").as_deref(), Some("1.0.0"));
    assert_eq!(current_version(&status, "sweeper"), None, "{status}");
    assert!(running(&status, "stats"), "{status}");
    assert!(!running(&status, "sweeper"), "{status}");
    assert_eq!(client.cmd(&["GET", "greeting"]), Resp::bulk("hello"));
    assert_eq!(client.cmd(&["INCR", "counter"]), Resp::Int(44));
    match client.cmd(&["TTL", "session"]) {
        Resp::Int(ttl) => assert!((90..=100).contains(&ttl), "TTL {ttl}"),
        other => panic!("TTL: {other:?}"),
    }
    assert_eq!(client.cmd(&["OBJECT", "FREQ", "greeting"]), Resp::Int(1));
    let info = client.cmd(&["INFO"]).text();
    assert!(info.contains("# Stats\r\ntotal_connections_received:"), "{info}");
    let total = |info: &str| -> u64 {
        let line = info.lines().find_map(|l| l.strip_prefix("total_commands_processed:")).expect("the count");
        line.parse().unwrap()
    };
    let first = total(&info);
    assert!(first > 0, "{info}");
    assert!(info.contains("relive_kv_version:2.0.0"), "{info}");
    assert!(info.contains(&format!("tcp_port:{port}")), "{info}");
    let info = client.cmd(&["INFO", "stats"]).text();
    assert!(info.starts_with("# Stats\r\n") && !info.contains("# Server"), "{info}");
    assert!(total(&info) > first, "the hammering clients' commands are counted: {info}");
    assert_eq!(node.call("kv", r#"{"Hits":"greeting"}"#), 1);
    assert!(node.call("stats", r#""TotalCommands""#).as_u64().unwrap() > first);

    // Rollback: 1.1.0 again, the sweeper back, stats gone, the connection
    // still there.
    let out = ok(&["rollback", "--root", r]);
    assert!(out.contains("to kv 1.1.0"), "{out}");
    progressed(&tally, seen);
    let status = node.status();
    assert_eq!(release_version(&status), "1.1.0");
    assert_eq!(current_version(&status, "kv").as_deref(), Some("1.1.0"));
    assert_eq!(current_version(&status, "sweeper").as_deref(), Some("1.0.0"));
    assert_eq!(current_version(&status, "stats"), None, "{status}");
    assert!(running(&status, "sweeper"), "{status}");
    assert!(!running(&status, "stats"), "{status}");
    assert!(matches!(client.cmd(&["INFO"]), Resp::Error(e) if e.contains("unknown command")));
    assert_eq!(client.cmd(&["GET", "greeting"]), Resp::bulk("hello"));
    assert_eq!(client.cmd(&["INCR", "counter"]), Resp::Int(45));
    match client.cmd(&["TTL", "session"]) {
        Resp::Int(ttl) => assert!((80..=100).contains(&ttl), "TTL {ttl}"),
        other => panic!("TTL: {other:?}"),
    }

    stop.store(true, Ordering::SeqCst);
    for hammer in hammers {
        hammer.join().unwrap();
    }
    let (answered, errors, dropped) = (
        tally.ok.load(Ordering::SeqCst),
        tally.errors.load(Ordering::SeqCst),
        tally.dropped.load(Ordering::SeqCst),
    );
    eprintln!(
        "kv: {answered} requests answered through 3 deploys and a rollback, {errors} errors, \
         {dropped} dropped connections, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let problems = tally.problems.lock().unwrap();
    assert_eq!((errors, dropped), (0, 0), "problems: {problems:?}");
    // The client connected at boot is the one still talking.
    assert_eq!(client.cmd(&["PING"]), Resp::Simple("PONG".into()));
}

#[test]
fn redis_benchmark_runs_through_a_live_deploy_without_errors() {
    let available = Command::new("which").arg("redis-benchmark").output().is_ok_and(|o| o.status.success());
    if !available {
        eprintln!("note: redis-benchmark is not installed (Debian's redis-tools): test skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let [v110, v200] = ["1.1.0", "2.0.0"].map(|version| kv_archive(version, port, dir.path()));
    let node = NodeGuard::start(&dir.path().join("node"), &["--boot", v110.to_str().unwrap()]);
    let r = node.root();

    let requests = || node.call("kv", r#""Requests""#).as_u64().unwrap();
    let before = requests();
    let port_text = port.to_string();
    let mut bench = Command::new("redis-benchmark")
        .args(["-p", &port_text, "-t", "set,get,incr", "-n", "20000", "-q"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running redis-benchmark");
    // Deploy once the benchmark's requests arrive.
    let deadline = Instant::now() + Duration::from_secs(10);
    while requests() < before + 100 {
        assert!(Instant::now() < deadline, "redis-benchmark sends nothing");
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = ok(&["deploy", v200.to_str().unwrap(), "--root", r]);
    assert!(out.contains("kv 2.0.0 runs now"), "{out}");
    let during = bench.try_wait().unwrap().is_none();
    let done = bench.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&done.stdout).replace('\r', "\n");
    let stderr = String::from_utf8_lossy(&done.stderr);
    let summary: Vec<&str> = stdout.lines().filter(|l| l.contains("requests per second")).collect();
    eprintln!("redis-benchmark through a live deploy 1.1.0 → 2.0.0:\n  {}", summary.join("\n  "));
    assert!(done.status.success(), "redis-benchmark failed: {stdout}{stderr}");
    assert!(during, "redis-benchmark ended before the deploy did: the deploy did not run through it");
    let output = format!("{stdout}{stderr}").to_lowercase();
    assert!(!output.contains("error") && !output.contains("closed"), "{stdout}{stderr}");
    for test in ["SET:", "GET:", "INCR:"] {
        assert!(summary.iter().any(|l| l.starts_with(test)), "no {test} result: {stdout}");
    }
    // The benchmark's commands after the switch were counted by 2.0.0.
    let status = node.status();
    assert_eq!(release_version(&status), "2.0.0");
    assert!(node.call("stats", r#""TotalCommands""#).as_u64().is_some());
}
