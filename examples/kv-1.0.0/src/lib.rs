//! The kv module, version 1.0.0: a key-value service that speaks RESP2, so
//! the stock `redis-cli` and `redis-benchmark` work against it.
//!
//! One process does it all: it listens (init argument
//! `{"listen": "127.0.0.1:6379"}`; port 0 picks a free one, see
//! `Request::Addr`), owns every connection it accepts, and answers each
//! request as its bytes arrive. The node owns the sockets, so connections
//! stay open while the process moves to another version of this module;
//! everything else (the values, each connection's unparsed bytes) is in
//! the state and crosses the upgrade through `code_change`.
//!
//! Commands: PING [msg], ECHO msg, GET k, SET k v, DEL k..., EXISTS k...,
//! DBSIZE, FLUSHALL/FLUSHDB, SELECT 0, COMMAND (an empty list), CONFIG GET
//! (what redis-benchmark asks: save, appendonly), QUIT. Anything else gets
//! Redis's `-ERR unknown command`.

use std::collections::HashMap;

use relive_abi::prelude::*;
use resp::Parsed;

/// The state: the values, and the connections this process serves.
#[derive(Serialize, Deserialize)]
pub struct Kv {
    /// Every key's value.
    values: HashMap<String, Vec<u8>>,
    /// Open connections by port number.
    conns: HashMap<u64, Conn>,
    /// The listener's port number.
    listener: u64,
    /// The address it is bound to.
    addr: String,
    /// Requests answered.
    #[serde(default)]
    requests: u64,
}

/// A connection: its peer, and the bytes of a request not yet complete.
#[derive(Serialize, Deserialize, Default)]
pub struct Conn {
    peer: String,
    buf: Vec<u8>,
}

/// Init argument.
#[derive(Deserialize)]
pub struct Start {
    /// Where to listen (`host:port`).
    listen: String,
}

/// Requests of the `call` API (for tests and the node's `call`).
#[derive(Deserialize)]
pub enum Request {
    /// A key's value as text (`null` if unset).
    Get(String),
    /// How many keys there are.
    Keys,
    /// How many connections are open.
    Connections,
    /// The address the listener is bound to.
    Addr,
    /// The version of the code answering.
    Version,
    /// Requests answered so far.
    Requests,
}

/// Replies.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// A value, or none.
    Value(Option<String>),
    /// A number.
    Number(u64),
    /// A text.
    Text(String),
}

/// What a connection does after a request.
#[derive(PartialEq, Eq)]
enum After {
    Continue,
    Close,
}

impl Kv {
    /// Runs one request, appending its reply to `out`.
    fn execute(&mut self, args: &[Vec<u8>], out: &mut Vec<u8>) -> After {
        self.requests += 1;
        let command = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        let n = args.len();
        match command.as_str() {
            "ping" if n == 1 => resp::simple(out, "PONG"),
            "ping" if n == 2 => resp::bulk(out, Some(&args[1])),
            "echo" if n == 2 => resp::bulk(out, Some(&args[1])),
            "get" if n == 2 => resp::bulk(out, self.values.get(&key(&args[1])).map(Vec::as_slice)),
            "set" if n == 3 => {
                self.values.insert(key(&args[1]), args[2].clone());
                resp::simple(out, "OK");
            }
            "set" if n > 3 => resp::error(out, "ERR syntax error"),
            "del" if n >= 2 => {
                let removed = args[1..].iter().filter(|k| self.values.remove(&key(k)).is_some()).count();
                resp::integer(out, removed as i64);
            }
            "exists" if n >= 2 => {
                let found = args[1..].iter().filter(|k| self.values.contains_key(&key(k))).count();
                resp::integer(out, found as i64);
            }
            "dbsize" if n == 1 => resp::integer(out, self.values.len() as i64),
            "flushall" | "flushdb" => {
                self.values.clear();
                resp::simple(out, "OK");
            }
            "select" if n == 2 => match resp::int_arg(&args[1]) {
                Some(0) => resp::simple(out, "OK"),
                _ => resp::error(out, "ERR DB index is out of range"),
            },
            "command" => resp::array(out, 0),
            "config" => config(args, out),
            "quit" => {
                resp::simple(out, "OK");
                return After::Close;
            }
            "ping" | "echo" | "get" | "set" | "del" | "exists" | "dbsize" | "select" => {
                resp::wrong_arity(out, &command)
            }
            _ => resp::unknown_command(out, args),
        }
        After::Continue
    }

    /// Bytes arrived on `port`: answers every complete request in its
    /// buffer, in one write.
    fn data(&mut self, port: PortId, bytes: Vec<u8>, ctx: &mut Ctx<'_>) {
        let conn = self.conns.entry(port.0).or_default();
        let buf = if conn.buf.is_empty() {
            bytes
        } else {
            let mut buf = std::mem::take(&mut conn.buf);
            buf.extend_from_slice(&bytes);
            buf
        };
        let (mut at, mut out, mut after) = (0, Vec::new(), After::Continue);
        while after == After::Continue {
            match resp::parse(&buf[at..]) {
                Parsed::Request { args, consumed } => {
                    at += consumed;
                    after = self.execute(&args, &mut out);
                }
                Parsed::Skip { consumed } => at += consumed,
                Parsed::Incomplete => break,
                Parsed::Error(error) => {
                    resp::error(&mut out, &format!("ERR Protocol error: {error}"));
                    after = After::Close;
                }
            }
        }
        if !out.is_empty() {
            let _ = ctx.port_send(port, &out);
        }
        if after == After::Close {
            self.conns.remove(&port.0);
            let _ = ctx.port_close(port);
        } else if let Some(conn) = self.conns.get_mut(&port.0) {
            conn.buf = if at == buf.len() { Vec::new() } else { buf[at..].to_vec() };
        }
    }
}

/// A key as text (keys are kept as strings; other bytes are replaced).
fn key(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// CONFIG GET for what clients ask (redis-benchmark: save, appendonly);
/// CONFIG SET/RESETSTAT are accepted and ignored.
fn config(args: &[Vec<u8>], out: &mut Vec<u8>) {
    let sub = args.get(1).map(|a| String::from_utf8_lossy(a).to_ascii_lowercase());
    match sub.as_deref() {
        Some("get") if args.len() >= 3 => {
            const KNOWN: [(&str, &str); 3] = [("save", ""), ("appendonly", "no"), ("databases", "1")];
            let mut pairs = Vec::new();
            for pattern in &args[2..] {
                let pattern = String::from_utf8_lossy(pattern).to_ascii_lowercase();
                for (name, value) in KNOWN {
                    if (pattern == "*" || pattern == name) && !pairs.iter().any(|(n, _)| *n == name) {
                        pairs.push((name, value));
                    }
                }
            }
            resp::array(out, pairs.len() * 2);
            for (name, value) in pairs {
                resp::bulk(out, Some(name.as_bytes()));
                resp::bulk(out, Some(value.as_bytes()));
            }
        }
        Some("set") | Some("resetstat") => resp::simple(out, "OK"),
        _ => resp::error(out, "ERR unknown subcommand or wrong number of arguments for 'config' command"),
    }
}

impl Behaviour for Kv {
    type Init = Start;
    type Call = Request;
    type Reply = Reply;
    type Cast = ();
    type Info = ();

    fn init(start: Start, ctx: &mut Ctx<'_>) -> Result<Self, Error> {
        let (listener, addr) = ctx.listen_at(&start.listen)?;
        ctx.log(LogLevel::Info, &format!("kv {} listening on {addr}", env!("CARGO_PKG_VERSION")));
        Ok(Kv { values: HashMap::new(), conns: HashMap::new(), listener: listener.0, addr, requests: 0 })
    }

    fn handle_call(&mut self, request: Request, _ctx: &mut Ctx<'_>) -> Reply {
        match request {
            Request::Get(k) => {
                Reply::Value(self.values.get(&k).map(|v| String::from_utf8_lossy(v).into_owned()))
            }
            Request::Keys => Reply::Number(self.values.len() as u64),
            Request::Connections => Reply::Number(self.conns.len() as u64),
            Request::Addr => Reply::Text(self.addr.clone()),
            Request::Version => Reply::Text(env!("CARGO_PKG_VERSION").to_string()),
            Request::Requests => Reply::Number(self.requests),
        }
    }

    fn handle_info(&mut self, info: Info<()>, ctx: &mut Ctx<'_>) {
        let Info::Port(event) = info else { return };
        match event {
            PortEvent::Accepted { port, peer, .. } => {
                self.conns.insert(port.0, Conn { peer, buf: Vec::new() });
            }
            PortEvent::Data { port, bytes } => self.data(port, bytes, ctx),
            PortEvent::Closed { port, .. } => {
                self.conns.remove(&port.0);
            }
        }
    }
}

relive_abi::export_module!(Kv, name = "kv");
