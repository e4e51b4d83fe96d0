//! The kv module, version 1.2.0: a deliberately broken release, for the
//! demo and the tests of an aborted upgrade.
//!
//! It is 1.1.0 (see examples/kv-1.1.0) plus APPEND and STRLEN, with a
//! stricter notion of a key: 1.2.0 would only keep keys that have no
//! whitespace and do not start with the reserved prefix `bad`. Its
//! `code_change` from 1.1.x checks every stored key and fails, naming the
//! first offending key, when one breaks that rule; the upgrader then aborts
//! the whole upgrade and every process stays on 1.1.0 with its state. On
//! data without such keys the upgrade succeeds (the state's format is
//! 1.1.0's, so `downgrade` to 1.1 writes it back unchanged).
//!
//! 1.0.0's state is converted as 1.1.0 converts it.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use relive_abi::prelude::*;
use resp::Parsed;

/// The state: the values, and the connections this process serves.
#[derive(Serialize, Deserialize)]
pub struct Kv {
    /// Every key's value and expiry.
    values: HashMap<String, Entry>,
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

/// A stored value (new in 1.1.0).
#[derive(Serialize, Deserialize, Clone)]
pub struct Entry {
    value: Vec<u8>,
    /// When it expires, in milliseconds since the Unix epoch.
    expires_at: Option<u64>,
}

/// Version 1.0.0's state, as its bytes read.
#[derive(Serialize, Deserialize)]
struct KvV1 {
    values: HashMap<String, Vec<u8>>,
    conns: HashMap<u64, Conn>,
    listener: u64,
    addr: String,
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

/// Requests of the `call` API: 1.0.0's, plus `Ttl`.
#[derive(Deserialize)]
pub enum Request {
    /// A key's value as text (`null` if unset or expired).
    Get(String),
    /// How many live keys there are.
    Keys,
    /// How many connections are open.
    Connections,
    /// The address the listener is bound to.
    Addr,
    /// The version of the code answering.
    Version,
    /// Requests answered so far.
    Requests,
    /// A key's remaining time to live in milliseconds: -1 without expiry,
    /// -2 if missing.
    Ttl(String),
}

/// Casts: what the sweeper sends.
#[derive(Deserialize)]
pub enum Cast {
    /// Drop every key that has expired.
    Sweep,
}

/// Replies.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// A value, or none.
    Value(Option<String>),
    /// A number.
    Number(u64),
    /// A signed number.
    Int(i64),
    /// A text.
    Text(String),
}

/// What a connection does after a request.
#[derive(PartialEq, Eq)]
enum After {
    Continue,
    Close,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Entry {
    fn live(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

impl Kv {
    /// The live entry of `key`, removing it if it has expired.
    fn entry(&mut self, key: &str, now: u64) -> Option<&mut Entry> {
        if self.values.get(key).is_some_and(|e| !e.live(now)) {
            self.values.remove(key);
        }
        self.values.get_mut(key)
    }

    fn live_keys(&self, now: u64) -> usize {
        self.values.values().filter(|e| e.live(now)).count()
    }

    /// Runs one request, appending its reply to `out`.
    fn execute(&mut self, args: &[Vec<u8>], out: &mut Vec<u8>) -> After {
        self.requests += 1;
        let command = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        let n = args.len();
        let now = now_ms();
        match command.as_str() {
            "ping" if n == 1 => resp::simple(out, "PONG"),
            "ping" if n == 2 => resp::bulk(out, Some(&args[1])),
            "echo" if n == 2 => resp::bulk(out, Some(&args[1])),
            "get" if n == 2 => resp::bulk(out, self.entry(&key(&args[1]), now).map(|e| e.value.as_slice())),
            "set" if n >= 3 => self.set(args, now, out),
            "del" if n >= 2 => {
                let removed = args[1..]
                    .iter()
                    .filter(|k| self.values.remove(&key(k)).is_some_and(|e| e.live(now)))
                    .count();
                resp::integer(out, removed as i64);
            }
            "exists" if n >= 2 => {
                let found = args[1..].iter().filter(|k| self.entry(&key(k), now).is_some()).count();
                resp::integer(out, found as i64);
            }
            "dbsize" if n == 1 => {
                self.values.retain(|_, e| e.live(now));
                resp::integer(out, self.values.len() as i64);
            }
            "incr" if n == 2 => self.incr_by(&key(&args[1]), 1, now, out),
            "decr" if n == 2 => self.incr_by(&key(&args[1]), -1, now, out),
            "incrby" | "decrby" if n == 3 => match resp::int_arg(&args[2]) {
                Some(by) if command == "incrby" => self.incr_by(&key(&args[1]), by, now, out),
                Some(by) if by != i64::MIN => self.incr_by(&key(&args[1]), -by, now, out),
                _ => resp::error(out, "ERR value is not an integer or out of range"),
            },
            "expire" | "pexpire" if n == 3 => {
                let unit = if command == "expire" { 1000 } else { 1 };
                match resp::int_arg(&args[2]).and_then(|t| t.checked_mul(unit)) {
                    None => resp::error(out, "ERR value is not an integer or out of range"),
                    Some(ms) => {
                        let k = key(&args[1]);
                        match self.entry(&k, now) {
                            None => resp::integer(out, 0),
                            Some(_) if ms <= 0 => {
                                self.values.remove(&k);
                                resp::integer(out, 1);
                            }
                            Some(entry) => {
                                entry.expires_at = Some(now.saturating_add(ms as u64));
                                resp::integer(out, 1);
                            }
                        }
                    }
                }
            }
            "ttl" | "pttl" if n == 2 => {
                let ms = self.ttl_ms(&key(&args[1]), now);
                // Redis rounds TTL to the nearest second.
                let reply = if ms < 0 || command == "pttl" { ms } else { (ms + 500) / 1000 };
                resp::integer(out, reply);
            }
            "persist" if n == 2 => match self.entry(&key(&args[1]), now) {
                Some(entry) if entry.expires_at.is_some() => {
                    entry.expires_at = None;
                    resp::integer(out, 1);
                }
                _ => resp::integer(out, 0),
            },
            "append" if n == 3 => {
                let k = key(&args[1]);
                let length = match self.entry(&k, now) {
                    Some(entry) => {
                        entry.value.extend_from_slice(&args[2]);
                        entry.value.len()
                    }
                    None => {
                        self.values.insert(k, Entry { value: args[2].clone(), expires_at: None });
                        args[2].len()
                    }
                };
                resp::integer(out, length as i64);
            }
            "strlen" if n == 2 => {
                let length = self.entry(&key(&args[1]), now).map_or(0, |e| e.value.len());
                resp::integer(out, length as i64);
            }
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
            "ping" | "echo" | "get" | "set" | "del" | "exists" | "dbsize" | "select" | "incr" | "decr"
            | "incrby" | "decrby" | "expire" | "pexpire" | "ttl" | "pttl" | "persist" | "append"
            | "strlen" => resp::wrong_arity(out, &command),
            _ => resp::unknown_command(out, args),
        }
        After::Continue
    }

    /// SET key value [EX seconds | PX milliseconds]
    fn set(&mut self, args: &[Vec<u8>], now: u64, out: &mut Vec<u8>) {
        let mut expires_at = None;
        let mut options = args[3..].iter();
        while let Some(option) = options.next() {
            let unit = match String::from_utf8_lossy(option).to_ascii_lowercase().as_str() {
                "ex" if expires_at.is_none() => 1000,
                "px" if expires_at.is_none() => 1,
                _ => return resp::error(out, "ERR syntax error"),
            };
            match options.next().and_then(|t| resp::int_arg(t)).and_then(|t| t.checked_mul(unit)) {
                Some(ms) if ms > 0 => expires_at = Some(now.saturating_add(ms as u64)),
                Some(_) => return resp::error(out, "ERR invalid expire time in 'set' command"),
                None => return resp::error(out, "ERR value is not an integer or out of range"),
            }
        }
        self.values.insert(key(&args[1]), Entry { value: args[2].clone(), expires_at });
        resp::simple(out, "OK");
    }

    /// INCR and friends: the value as a decimal i64 plus `by`; keeps the
    /// key's expiry, as Redis does.
    fn incr_by(&mut self, k: &str, by: i64, now: u64, out: &mut Vec<u8>) {
        let entry = match self.entry(k, now) {
            Some(entry) => entry,
            None => {
                self.values.entry(k.to_string()).or_insert(Entry { value: b"0".to_vec(), expires_at: None })
            }
        };
        match resp::int_arg(&entry.value).and_then(|n| n.checked_add(by)) {
            Some(n) => {
                entry.value = n.to_string().into_bytes();
                resp::integer(out, n);
            }
            None => resp::error(out, "ERR value is not an integer or out of range"),
        }
    }

    fn ttl_ms(&mut self, k: &str, now: u64) -> i64 {
        match self.entry(k, now) {
            None => -2,
            Some(Entry { expires_at: None, .. }) => -1,
            Some(Entry { expires_at: Some(at), .. }) => at.saturating_sub(now) as i64,
        }
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

/// Whether 1.2.0 accepts `key`: no whitespace, no `bad` prefix.
fn acceptable(key: &str) -> bool {
    !key.starts_with("bad") && !key.chars().any(char::is_whitespace)
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
    type Cast = Cast;
    type Info = ();

    fn init(start: Start, ctx: &mut Ctx<'_>) -> Result<Self, Error> {
        let (listener, addr) = ctx.listen_at(&start.listen)?;
        ctx.log(LogLevel::Info, &format!("kv {} listening on {addr}", env!("CARGO_PKG_VERSION")));
        Ok(Kv { values: HashMap::new(), conns: HashMap::new(), listener: listener.0, addr, requests: 0 })
    }

    fn handle_call(&mut self, request: Request, _ctx: &mut Ctx<'_>) -> Reply {
        let now = now_ms();
        match request {
            Request::Get(k) => {
                Reply::Value(self.entry(&k, now).map(|e| String::from_utf8_lossy(&e.value).into_owned()))
            }
            Request::Keys => Reply::Number(self.live_keys(now) as u64),
            Request::Connections => Reply::Number(self.conns.len() as u64),
            Request::Addr => Reply::Text(self.addr.clone()),
            Request::Version => Reply::Text(env!("CARGO_PKG_VERSION").to_string()),
            Request::Requests => Reply::Number(self.requests),
            Request::Ttl(k) => Reply::Int(self.ttl_ms(&k, now)),
        }
    }

    fn handle_cast(&mut self, cast: Cast, _ctx: &mut Ctx<'_>) {
        match cast {
            Cast::Sweep => {
                let now = now_ms();
                self.values.retain(|_, e| e.live(now));
            }
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

    fn code_change(from: &Version, old: StateBytes, _extra: Extra) -> Result<Self, Error> {
        let kv: Kv = if (from.major, from.minor) == (1, 0) {
            let v1: KvV1 = old.decode()?;
            let values =
                v1.values.into_iter().map(|(k, value)| (k, Entry { value, expires_at: None })).collect();
            Kv { values, conns: v1.conns, listener: v1.listener, addr: v1.addr, requests: v1.requests }
        } else {
            old.decode()?
        };
        if (from.major, from.minor) == (1, 1) {
            // The deliberate bug: keys 1.1.0 accepted that this version
            // refuses to carry over.
            let mut refused: Vec<&String> = kv.values.keys().filter(|k| !acceptable(k)).collect();
            refused.sort();
            if let Some(first) = refused.first() {
                return Err(Error::new(format!(
                    "kv 1.2.0 cannot convert key {first:?} ({} of {} keys refused): keys may not contain \
                     whitespace or start with \"bad\"",
                    refused.len(),
                    kv.values.len()
                )));
            }
        }
        Ok(kv)
    }

    fn downgrade(&self, to: &Version) -> Result<StateBytes, Error> {
        if (to.major, to.minor) != (1, 0) {
            return StateBytes::encode(self);
        }
        let now = now_ms();
        let values =
            self.values.iter().filter(|(_, e)| e.live(now)).map(|(k, e)| (k.clone(), e.value.clone()));
        let conns = self.conns.iter().map(|(id, c)| (*id, Conn { peer: c.peer.clone(), buf: c.buf.clone() }));
        StateBytes::encode(&KvV1 {
            values: values.collect(),
            conns: conns.collect(),
            listener: self.listener,
            addr: self.addr.clone(),
            requests: self.requests,
        })
    }
}

relive_abi::export_module!(Kv, name = "kv");
