//! kv 2.1.0 (examples/releases/kv-2.1.0) on a node, through the `relive`
//! binary and raw RESP clients:
//! - the live way up from 2.0.0 and back (values, expiries, hit counts and
//!   a half-received request kept both ways), and the way down refused
//!   while a key is not UTF-8 (2.0.0 cannot hold it), with kv left running
//!   2.1.0 and every key kept;
//! - clients as hostile as issue 15's probes: binary keys, out-of-range
//!   expiries and increments (answered with Redis's words), a request sent
//!   a byte at a time, a 32 MiB value, a million-element array in 4 KiB
//!   writes, bytes that are not RESP; other clients are answered meanwhile.
//!
//! Each test builds its own copies of the release manifests with a free
//! port in place of 6380 and absolute crate paths (`common::kv_archive`).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{NodeGuard, failure, free_port, kv_archive, ok};

/// A RESP2 reply.
#[derive(Debug, PartialEq, Eq)]
enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
}

fn bulk(bytes: &[u8]) -> Resp {
    Resp::Bulk(Some(bytes.to_vec()))
}

fn ok_reply() -> Resp {
    Resp::Simple("OK".into())
}

fn error(text: &str) -> Resp {
    Resp::Error(text.into())
}

/// One connection, raw RESP over a std TcpStream.
struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to kv");
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        stream.set_nodelay(true).unwrap();
        Client { writer: stream.try_clone().unwrap(), reader: BufReader::new(stream) }
    }

    fn encode(args: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    fn write(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("writing to kv");
    }

    /// Sends one request (binary arguments) and reads its reply.
    fn cmd_bytes(&mut self, args: &[&[u8]]) -> Resp {
        self.write(&Client::encode(args));
        self.read()
    }

    fn cmd(&mut self, args: &[&str]) -> Resp {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.cmd_bytes(&args)
    }

    fn line(&mut self) -> String {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).expect("reading a reply line");
        assert!(
            line.ends_with(b"\r\n"),
            "reply line {:?} does not end with CRLF",
            String::from_utf8_lossy(&line)
        );
        line.truncate(line.len() - 2);
        String::from_utf8_lossy(&line).into_owned()
    }

    fn read(&mut self) -> Resp {
        let line = self.line();
        let (kind, rest) = line.split_at(1);
        match kind {
            "+" => Resp::Simple(rest.to_string()),
            "-" => Resp::Error(rest.to_string()),
            ":" => Resp::Int(rest.parse().expect("an integer reply")),
            "$" => match rest.parse::<i64>().expect("a bulk length") {
                -1 => Resp::Bulk(None),
                n => {
                    let mut bytes = vec![0; n as usize + 2];
                    self.reader.read_exact(&mut bytes).expect("reading a bulk string");
                    assert_eq!(&bytes[n as usize..], b"\r\n");
                    bytes.truncate(n as usize);
                    Resp::Bulk(Some(bytes))
                }
            },
            "*" => {
                let n: i64 = rest.parse().expect("an array length");
                Resp::Array((0..n.max(0)).map(|_| self.read()).collect())
            }
            _ => panic!("not a RESP reply: {line:?}"),
        }
    }

    /// True once kv has closed the connection.
    fn sees_close(&mut self) -> bool {
        let mut buf = [0u8; 64];
        match self.reader.read(&mut buf) {
            Ok(0) => true,
            Ok(n) => {
                panic!("expected the connection to close, read {:?}", String::from_utf8_lossy(&buf[..n]))
            }
            Err(e) => matches!(e.kind(), std::io::ErrorKind::ConnectionReset),
        }
    }
}

fn ttl(client: &mut Client, key: &str) -> i64 {
    match client.cmd(&["TTL", key]) {
        Resp::Int(ttl) => ttl,
        other => panic!("TTL {key}: {other:?}"),
    }
}

#[test]
fn kv_2_1_0_upgrades_live_from_2_0_0_and_back_and_refuses_to_go_down_with_binary_keys() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let [v200, v210] = ["2.0.0", "2.1.0"].map(|version| kv_archive(version, port, dir.path()));
    let node = NodeGuard::start(&dir.path().join("node"), &["--boot", v200.to_str().unwrap()]);
    let r = node.root();

    // On 2.0.0: a value read once, a key with an expiry, a counter; and a
    // client in the middle of a request.
    let mut client = Client::connect(port);
    assert_eq!(client.cmd(&["SET", "greeting", "hello"]), ok_reply());
    assert_eq!(client.cmd(&["GET", "greeting"]), bulk(b"hello"));
    assert_eq!(client.cmd(&["SET", "session", "s1", "EX", "100"]), ok_reply());
    assert_eq!(client.cmd(&["SET", "counter", "41"]), ok_reply());
    let mut halfway = Client::connect(port);
    let set = Client::encode(&[b"SET", b"pending", b"sent across the upgrade"]);
    let (first, rest) = set.split_at(30);
    // A PING and half a SET in one small write (one segment on loopback,
    // read whole): once the PONG is back, the half is in kv's state.
    halfway.write(&[b"PING\r\n".as_slice(), first].concat());
    assert_eq!(halfway.read(), Resp::Simple("PONG".into()));

    // Up to 2.1.0, live.
    let out = ok(&["deploy", v210.to_str().unwrap(), "--root", r]);
    assert!(out.contains("kv 2.1.0 runs now"), "{out}");
    assert_eq!(node.call("kv", r#""Version""#), "2.1.0");
    halfway.write(rest);
    assert_eq!(halfway.read(), ok_reply(), "the request begun on 2.0.0 is answered by 2.1.0");
    assert_eq!(client.cmd(&["GET", "pending"]), bulk(b"sent across the upgrade"));
    assert_eq!(client.cmd(&["GET", "greeting"]), bulk(b"hello"));
    assert_eq!(client.cmd(&["OBJECT", "FREQ", "greeting"]), Resp::Int(2), "hit counts are kept");
    assert!((90..=100).contains(&ttl(&mut client, "session")));
    assert_eq!(client.cmd(&["INCR", "counter"]), Resp::Int(42));

    // Back to 2.0.0 (the controller's undo): kv 2.1.0's downgrade writes
    // 2.0.0's state, every key being text.
    let out = ok(&["rollback", "--root", r]);
    assert!(out.contains("to kv 2.0.0"), "{out}");
    assert_eq!(node.call("kv", r#""Version""#), "2.0.0");
    assert_eq!(client.cmd(&["GET", "greeting"]), bulk(b"hello"));
    assert_eq!(client.cmd(&["GET", "pending"]), bulk(b"sent across the upgrade"));
    assert_eq!(client.cmd(&["OBJECT", "FREQ", "greeting"]), Resp::Int(3));
    assert!((80..=100).contains(&ttl(&mut client, "session")));
    assert_eq!(client.cmd(&["INCR", "counter"]), Resp::Int(43));
    // 2.0.0 reads keys as lossy UTF-8: two binary keys are one.
    assert_eq!(client.cmd_bytes(&[b"SET", b"\xff", b"a"]), ok_reply());
    assert_eq!(client.cmd_bytes(&[b"SET", b"\xfe", b"b"]), ok_reply());
    assert_eq!(client.cmd_bytes(&[b"GET", b"\xff"]), bulk(b"b"));
    assert_eq!(client.cmd_bytes(&[b"DEL", b"\xff"]), Resp::Int(1));

    // Up again; binary keys are distinct on 2.1.0.
    let out = ok(&["deploy", v210.to_str().unwrap(), "--root", r]);
    assert!(out.contains("kv 2.1.0 runs now"), "{out}");
    assert_eq!(client.cmd_bytes(&[b"SET", b"\xff", b"a"]), ok_reply());
    assert_eq!(client.cmd_bytes(&[b"SET", b"\xfe", b"b"]), ok_reply());
    assert_eq!(client.cmd_bytes(&[b"SET", b"caf\xc3\xa9", b"text"]), ok_reply());
    assert_eq!(client.cmd_bytes(&[b"GET", b"\xff"]), bulk(b"a"));
    assert_eq!(client.cmd_bytes(&[b"GET", b"\xfe"]), bulk(b"b"));

    // The controller's undo of that deploy is refused the same way, before
    // any process moves: no half rollback, nothing recorded in the store.
    let err = failure(&["rollback", "--root", r]);
    assert!(err.contains("2 keys are not (\"\\xfe\", \"\\xff\")"), "{err}");
    assert!(err.contains("nothing was moved back"), "{err}");
    assert!(err.contains("the node still runs kv 2.1.0"), "{err}");
    assert_eq!(node.call("kv", r#""Version""#), "2.1.0");
    assert_eq!(node.status()["release"]["version"], "2.1.0");
    assert_eq!(client.cmd_bytes(&[b"GET", b"\xfe"]), bulk(b"b"));

    // Down to 2.0.0 through a deploy: refused, naming the keys; kv stays
    // on 2.1.0 with every key, the client still connected.
    let err = failure(&["deploy", v200.to_str().unwrap(), "--root", r]);
    assert!(err.contains("2 keys are not (\"\\xfe\", \"\\xff\")"), "the error counts and names them: {err}");
    assert!(err.contains("kv keeps running 2.1.0 with every key"), "{err}");
    assert_eq!(node.call("kv", r#""Version""#), "2.1.0");
    assert_eq!(client.cmd_bytes(&[b"GET", b"\xff"]), bulk(b"a"));
    assert_eq!(client.cmd_bytes(&[b"GET", b"\xfe"]), bulk(b"b"));
    assert_eq!(client.cmd(&["GET", "greeting"]), bulk(b"hello"));

    // Without them, the way down is open and keeps the rest.
    assert_eq!(client.cmd_bytes(&[b"DEL", b"\xff", b"\xfe"]), Resp::Int(2));
    ok(&["deploy", v200.to_str().unwrap(), "--root", r]);
    assert_eq!(node.call("kv", r#""Version""#), "2.0.0");
    assert_eq!(client.cmd(&["GET", "greeting"]), bulk(b"hello"));
    assert_eq!(client.cmd_bytes(&[b"GET", "café".as_bytes()]), bulk(b"text"));
    assert_eq!(client.cmd(&["INCR", "counter"]), Resp::Int(44));
    assert_eq!(client.cmd(&["PING"]), Resp::Simple("PONG".into()));
}

/// The first line a client reads, or `None` if the connection closes or
/// says nothing within a second (a client kv accepted says nothing first).
fn greeting(port: u16) -> (TcpStream, Option<String>) {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to kv");
    stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut line = String::new();
    let said = BufReader::new(stream.try_clone().unwrap()).read_line(&mut line).is_ok_and(|n| n > 0);
    (stream, said.then_some(line))
}

#[test]
fn kv_2_0_0_upgraded_live_to_2_1_0_gives_its_listener_2_1_0s_client_cap() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let v200 = kv_archive("2.0.0", port, dir.path());
    // 2.1.0 with a cap of 3 clients in its configuration (an upgraded
    // process has no init arguments to read it from).
    let v210 = {
        let built = tempfile::tempdir_in(dir.path()).unwrap();
        let archive = kv_archive("2.1.0", port, built.path());
        let app = built.path().join("kv-2.1.0");
        let manifest = std::fs::read_to_string(app.join("release.toml")).unwrap();
        std::fs::write(app.join("release.toml"), format!("{manifest}\n[config]\nmaxclients = 3\n")).unwrap();
        drop(archive);
        common::build(&app, &dir.path().join("capped"))
    };
    let node = NodeGuard::start(&dir.path().join("node"), &["--boot", v200.to_str().unwrap()]);
    let r = node.root();

    // 2.0.0's listener has no cap: a fourth client is served.
    let mut clients: Vec<Client> = (0..3).map(|_| Client::connect(port)).collect();
    for client in &mut clients {
        assert_eq!(client.cmd(&["PING"]), Resp::Simple("PONG".into()));
    }
    let (fourth, said) = greeting(port);
    assert_eq!(said, None, "2.0.0 accepts a fourth client");
    drop(fourth);

    let out = ok(&["deploy", v210.to_str().unwrap(), "--root", r]);
    assert!(out.contains("kv 2.1.0 runs now"), "{out}");
    // The first callback on 2.1.0 gives the listener its cap; the clients
    // of 2.0.0 stay connected and served.
    assert_eq!(clients[0].cmd(&["SET", "k", "v"]), ok_reply());
    for client in &mut clients {
        assert_eq!(client.cmd(&["GET", "k"]), bulk(b"v"));
    }
    let (_refused, said) = greeting(port);
    assert_eq!(
        said.as_deref(),
        Some("-ERR max number of clients reached\r\n"),
        "the listener now has 2.1.0's cap"
    );
    assert_eq!(node.call("kv", r#""Connections""#), 3);
    drop(clients.pop());
    // A place freed: a new client is served (once kv has seen the close).
    let mut served = None;
    for _ in 0..50 {
        let (stream, said) = greeting(port);
        if said.is_none() {
            served = Some(stream);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let stream = served.expect("a client is served once a place is free");
    let mut client = Client { writer: stream.try_clone().unwrap(), reader: BufReader::new(stream) };
    assert_eq!(client.cmd(&["GET", "k"]), bulk(b"v"));
}

/// A node booting kv 2.1.0 on a free port (the directory holds its store).
struct Kv210 {
    _dir: tempfile::TempDir,
    node: NodeGuard,
    port: u16,
}

fn kv_2_1_0_node() -> Kv210 {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let archive = kv_archive("2.1.0", port, dir.path());
    let node = NodeGuard::start(&dir.path().join("node"), &["--boot", archive.to_str().unwrap()]);
    Kv210 { _dir: dir, node, port }
}

#[test]
fn kv_2_1_0_answers_hostile_clients_as_redis_does_and_serves_others_meanwhile() {
    let Kv210 { _dir, node, port } = kv_2_1_0_node();
    let mut c = Client::connect(port);
    let mut other = Client::connect(port);

    // Binary keys are distinct, by array or by inline escapes.
    assert_eq!(c.cmd_bytes(&[b"SET", b"\xff", b"ff"]), ok_reply());
    assert_eq!(c.cmd_bytes(&[b"SET", b"\xfe", b"fe"]), ok_reply());
    c.write(b"GET \"\\xff\"\r\nGET \"\\xfe\"\r\nSET \"\\x00\\r\\n\" nul\r\n");
    assert_eq!((c.read(), c.read(), c.read()), (bulk(b"ff"), bulk(b"fe"), ok_reply()));
    assert_eq!(c.cmd_bytes(&[b"GET", b"\0\r\n"]), bulk(b"nul"));
    assert_eq!(c.cmd(&["DBSIZE"]), Resp::Int(3));

    // Expiries and increments out of range: Redis 7's errors, and nothing
    // stored (TTL stays -1, not a negative number).
    assert_eq!(c.cmd(&["SET", "k", "v"]), ok_reply());
    for args in [
        ["SET", "k", "v", "PX", "9223372036854775807"],
        ["SET", "k", "v", "EX", "9223372036854775807"],
        ["SET", "k", "v", "EX", "9223372036854775"],
        ["SET", "k", "v", "EX", "0"],
        ["SET", "k", "v", "PXAT", "0"],
    ] {
        assert_eq!(c.cmd(&args), error("ERR invalid expire time in 'set' command"), "{args:?}");
    }
    assert_eq!(c.cmd(&["SET", "k", "v", "PX", "abc"]), error("ERR value is not an integer or out of range"));
    assert_eq!(
        c.cmd(&["EXPIRE", "k", "9223372036854775807"]),
        error("ERR invalid expire time in 'expire' command")
    );
    assert_eq!(
        c.cmd(&["EXPIRE", "k", "9223372036854775"]),
        error("ERR invalid expire time in 'expire' command")
    );
    assert_eq!(
        c.cmd(&["PEXPIRE", "k", "9223372036854775807"]),
        error("ERR invalid expire time in 'pexpire' command")
    );
    assert_eq!(ttl(&mut c, "k"), -1);
    assert_eq!(c.cmd(&["EXPIRE", "k", "9223372036854"]), Resp::Int(1), "the largest EXPIRE Redis takes");
    assert!((9223372036853..=9223372036854).contains(&ttl(&mut c, "k")));
    assert_eq!(c.cmd(&["EXPIRE", "k", "-5"]), Resp::Int(1), "a time in the past deletes");
    assert_eq!(c.cmd(&["EXISTS", "k"]), Resp::Int(0));
    // A plain SET over a key replaces its value and drops its expiry; over
    // an expired key it stores afresh (kv overwrites in place there).
    assert_eq!(c.cmd(&["SET", "k", "old", "EX", "100"]), ok_reply());
    assert_eq!(c.cmd(&["SET", "k", "new"]), ok_reply());
    assert_eq!((c.cmd(&["GET", "k"]), ttl(&mut c, "k")), (bulk(b"new"), -1));
    assert_eq!(c.cmd(&["SET", "k", "gone", "PX", "1"]), ok_reply());
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(c.cmd(&["SET", "k", "back"]), ok_reply());
    assert_eq!((c.cmd(&["GET", "k"]), ttl(&mut c, "k")), (bulk(b"back"), -1));
    assert_eq!(c.cmd(&["SET", "k", "kept", "KEEPTTL"]), ok_reply());
    assert_eq!(c.cmd(&["SET", "k", "nx", "NX"]), Resp::Bulk(None));
    assert_eq!(c.cmd(&["GET", "k"]), bulk(b"kept"));
    assert_eq!(c.cmd(&["DEL", "k"]), Resp::Int(1));
    assert_eq!(c.cmd(&["SET", "n", "9223372036854775807"]), ok_reply());
    assert_eq!(c.cmd(&["INCR", "n"]), error("ERR increment or decrement would overflow"));
    assert_eq!(c.cmd(&["DECRBY", "n", "-9223372036854775808"]), error("ERR decrement would overflow"));
    assert_eq!(c.cmd(&["SET", "z", "01"]), ok_reply());
    assert_eq!(c.cmd(&["INCR", "z"]), error("ERR value is not an integer or out of range"));
    // The stored digits follow the number as its length changes.
    assert_eq!(c.cmd(&["INCR", "fresh"]), Resp::Int(1));
    assert_eq!(c.cmd(&["SET", "d", "8"]), ok_reply());
    for (command, by, now) in
        [("INCR", None, 9), ("INCR", None, 10), ("INCRBY", Some("1"), 11), ("DECRBY", Some("21"), -10)]
    {
        let reply = match by {
            Some(by) => c.cmd(&[command, "d", by]),
            None => c.cmd(&[command, "d"]),
        };
        assert_eq!(reply, Resp::Int(now));
        assert_eq!(c.cmd(&["GET", "d"]), bulk(now.to_string().as_bytes()));
    }

    // MSET, MGET, DBSIZE, FLUSHALL.
    assert_eq!(c.cmd(&["MSET", "a", "1", "b"]), error("ERR wrong number of arguments for 'mset' command"));
    assert_eq!(c.cmd(&["MSET", "a", "1", "b", "2"]), ok_reply());
    assert_eq!(
        c.cmd(&["MGET", "a", "nosuch", "b"]),
        Resp::Array(vec![bulk(b"1"), Resp::Bulk(None), bulk(b"2")])
    );
    assert_eq!(c.cmd(&["FLUSHALL", "FOO"]), error("ERR syntax error"));
    assert_eq!(c.cmd(&["FLUSHALL"]), ok_reply());
    assert_eq!(c.cmd(&["DBSIZE"]), Resp::Int(0));

    // Hits, misses and expired keys as INFO counts them (GET, MGET, SET GET
    // and INCR look keys up in one pass; an expired key found is removed).
    let before = keyspace_counts(&mut c);
    assert_eq!(c.cmd(&["SET", "h", "v"]), ok_reply());
    assert_eq!(c.cmd(&["GET", "h"]), bulk(b"v"));
    assert_eq!(c.cmd(&["GET", "nosuch"]), Resp::Bulk(None));
    assert_eq!(c.cmd(&["MGET", "h", "nosuch"]), Resp::Array(vec![bulk(b"v"), Resp::Bulk(None)]));
    assert_eq!(c.cmd(&["SET", "h", "w", "GET"]), bulk(b"v"));
    assert_eq!(c.cmd(&["SET", "e", "v", "PX", "1"]), ok_reply());
    assert_eq!(c.cmd(&["SET", "x", "41", "PX", "1"]), ok_reply());
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(c.cmd(&["GET", "e"]), Resp::Bulk(None));
    assert_eq!(c.cmd(&["INCR", "x"]), Resp::Int(1), "an expired counter starts again");
    let after = keyspace_counts(&mut c);
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(delta, [3, 3, 2], "keyspace_hits, keyspace_misses, expired_keys");
    assert_eq!(c.cmd(&["FLUSHALL"]), ok_reply());

    // A request a byte at a time, another client answered between bytes.
    let value = vec![b's'; 300];
    let slow = Client::encode(&[b"SET", b"slow", &value]);
    for (i, byte) in slow.iter().enumerate() {
        c.write(&[*byte]);
        if i % 50 == 0 {
            assert_eq!(other.cmd(&["PING"]), Resp::Simple("PONG".into()), "PING after byte {i}");
        } else if i < 40 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(c.read(), ok_reply());
    assert_eq!(c.cmd(&["GET", "slow"]), bulk(&value));

    // A 32 MiB value: half of it sent, another client is answered, then
    // the rest.
    let big: Vec<u8> = (0..32 << 20).map(|i: u32| (i % 251) as u8).collect();
    let set = Client::encode(&[b"SET", b"big", &big]);
    let (first, rest) = set.split_at(set.len() / 2);
    c.write(first);
    assert_eq!(
        other.cmd(&["PING"]),
        Resp::Simple("PONG".into()),
        "answered while the large SET is half sent"
    );
    assert_eq!(other.cmd(&["SET", "small", "x"]), ok_reply());
    c.write(rest);
    assert_eq!(c.read(), ok_reply());
    assert!(c.cmd(&["GET", "big"]) == bulk(&big), "the 32 MiB value reads back whole");
    assert_eq!(c.cmd(&["DEL", "big"]), Resp::Int(1));

    // A million-element array (MSET of 524,287 pairs) in 4 KiB writes.
    let pairs = (1 << 19) - 1;
    let keys: Vec<String> = (0..pairs).map(|i| format!("m{i}")).collect();
    let mut args: Vec<&[u8]> = vec![b"MSET"];
    for key in &keys {
        args.push(key.as_bytes());
        args.push(b"v");
    }
    let mset = Client::encode(&args);
    assert!(mset.starts_with(b"*1048575\r\n"));
    let mut writer = c.writer.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        for chunk in mset.chunks(4096) {
            writer.write_all(chunk).expect("writing the array");
        }
    });
    assert_eq!(other.cmd(&["PING"]), Resp::Simple("PONG".into()));
    sender.join().unwrap();
    assert_eq!(c.read(), ok_reply());
    assert_eq!(c.cmd(&["DBSIZE"]), Resp::Int(pairs as i64 + 2), "the pairs, slow and small");
    assert_eq!(c.cmd(&["GET", "m524286"]), bulk(b"v"));
    assert_eq!(c.cmd(&["FLUSHALL"]), ok_reply());
    assert_eq!(node.call("kv", r#""Keys""#), 0);

    // Bytes that are not RESP: Redis's error, then the connection closes.
    c.write(b"*1\r\n$-3\r\n");
    assert_eq!(c.read(), error("ERR Protocol error: invalid bulk length"));
    assert!(c.sees_close());
    let mut quotes = Client::connect(port);
    quotes.write(b"SET \"a b c\r\n");
    assert_eq!(quotes.read(), error("ERR Protocol error: unbalanced quotes in request"));
    assert!(quotes.sees_close());
    assert_eq!(other.cmd(&["PING"]), Resp::Simple("PONG".into()), "kv itself goes on");
}

/// INFO stats's keyspace_hits, keyspace_misses and expired_keys.
fn keyspace_counts(client: &mut Client) -> [u64; 3] {
    let Resp::Bulk(Some(text)) = client.cmd(&["INFO", "stats"]) else {
        panic!("INFO stats is a bulk string")
    };
    let text = String::from_utf8(text).unwrap();
    ["keyspace_hits", "keyspace_misses", "expired_keys"].map(|name| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text:?}"))
    })
}

/// The node's resident memory, in KiB.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the node's /proc status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmRSS in kB")
}

#[test]
fn flushall_hands_the_memory_of_its_keys_back_to_the_system() {
    let Kv210 { _dir, node, port } = kv_2_1_0_node();
    let mut client = Client::connect(port);
    assert_eq!(client.cmd(&["PING"]), Resp::Simple("PONG".into()));
    let before = resident_kib(node.pid());

    // 200,000 keys of 100 bytes (redis-benchmark's -d 100), pipelined.
    let value = [b'v'; 100];
    for batch in 0..200 {
        let mut requests = Vec::new();
        for i in 0..1000 {
            let key = format!("key:{batch}:{i}");
            requests.extend(Client::encode(&[b"SET", key.as_bytes(), &value]));
        }
        client.write(&requests);
        for _ in 0..1000 {
            assert_eq!(client.read(), ok_reply());
        }
    }
    assert_eq!(client.cmd(&["DBSIZE"]), Resp::Int(200_000));
    let full = resident_kib(node.pid());
    assert!(full > before + 20_000, "200,000 keys take memory: {before} KiB before, {full} KiB after");

    assert_eq!(client.cmd(&["FLUSHALL"]), ok_reply());
    assert_eq!(client.cmd(&["DBSIZE"]), Resp::Int(0));
    let after = resident_kib(node.pid());
    // glibc alone keeps about a third of what was freed (the pages stay in
    // its arenas); kv hands them back, as Redis does.
    assert!(
        after < before + (full - before) / 10,
        "FLUSHALL left {after} KiB resident (before the keys {before} KiB, with them {full} KiB)"
    );
    assert_eq!(client.cmd(&["SET", "again", "1"]), ok_reply(), "kv serves on after the trim");
}

#[test]
fn the_memory_of_large_requests_goes_back_to_the_system() {
    let Kv210 { _dir, node, port } = kv_2_1_0_node();
    let mut client = Client::connect(port);
    assert_eq!(client.cmd(&["PING"]), Resp::Simple("PONG".into()));
    let before = resident_kib(node.pid());

    // What a hostile client can make a node allocate: a 64 MiB value, and a
    // 1,000,000-key EXISTS in 4 KiB pieces (its parse grows buffers step by
    // step). With glibc's default (self-raising) thresholds the node kept
    // 38-104 MiB of that after FLUSHALL, at the tops of its threads' heaps
    // where malloc_trim does not reach; with the node's fixed thresholds
    // (`return_freed_memory_promptly`) about 3 MiB.
    const VALUE: usize = 64 << 20;
    let exists: Vec<u8> = {
        let keys: Vec<String> = (0..1_000_000).map(|i| format!("absent:{i}")).collect();
        let mut args: Vec<&[u8]> = vec![b"EXISTS"];
        args.extend(keys.iter().map(|k| k.as_bytes()));
        Client::encode(&args)
    };
    let mut largest = 0;
    for _ in 0..3 {
        let mut big = Client::connect(port);
        big.write(format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${VALUE}\r\n").as_bytes());
        let piece = vec![b'x'; 64 << 10];
        for _ in 0..VALUE / piece.len() {
            big.write(&piece);
        }
        big.write(b"\r\n");
        assert_eq!(big.read(), ok_reply());
        largest = largest.max(resident_kib(node.pid()));
        let mut chunked = Client::connect(port);
        for piece in exists.chunks(4096) {
            chunked.write(piece);
        }
        assert_eq!(chunked.read(), Resp::Int(0));
        assert_eq!(big.cmd(&["DEL", "big"]), Resp::Int(1));
    }
    assert!(largest > before + 60_000, "a 64 MiB value is resident while stored: {largest} KiB");
    assert_eq!(client.cmd(&["FLUSHALL"]), ok_reply());
    let after = resident_kib(node.pid());
    assert!(
        after < before + 16 * 1024,
        "after three rounds of large requests and FLUSHALL the node holds {after} KiB (it started at {before} KiB)"
    );
    assert_eq!(client.cmd(&["PING"]), Resp::Simple("PONG".into()), "kv serves on");
}
