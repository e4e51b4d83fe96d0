//! The kv module, version 2.0.0: 1.1.0 (see examples/kv-1.1.0) with
//! per-key statistics, active expiry and INFO.
//!
//! - Every stored value now also carries its hit count (reads that found
//!   it: GET, OBJECT FREQ reads it) and its creation time, so the state
//!   type changed again: `code_change` from 1.1.x (or 1.0.x) gives every
//!   existing key zero hits and the upgrade's time as its creation time;
//!   `downgrade` to 1.1 drops both, to 1.0 also the expiry (and the keys
//!   that have expired).
//! - Expired keys are removed by kv itself, every second, on its own timer:
//!   the sweeper process of the 1.1 releases is no longer needed, and the
//!   2.0.0 release removes it. (A `Sweep` cast is still accepted.)
//! - kv counts what it does (commands by name, connections, hits, misses,
//!   expired keys) and casts the counts to the process registered as
//!   `stats` (examples/kv-stats) in batches: every 256 commands and every
//!   tick. `INFO [section]` calls stats with the counts not sent yet and
//!   replies with the text stats builds. Counts that could not be sent (no
//!   `stats` registered yet, in the moment an upgrade starts it) are kept
//!   and sent with the next batch.
//!
//! The timer's message carries a generation (set by `init` and
//! `code_change`): a tick armed by an earlier life of the process (before a
//! downgrade and a new upgrade) is ignored, so one timer chain runs. After
//! an upgrade the chain starts with the first message the process handles.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relive_abi::prelude::*;
use resp::Parsed;

/// How often expired keys are removed and counts flushed.
const TICK: Duration = Duration::from_secs(1);
/// Commands after which counts are sent to stats without waiting for a tick.
const BATCH: u64 = 256;
/// How long INFO waits for stats.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// The state: the values, the connections this process serves, the counts
/// not yet sent to stats, and the timer's generation.
#[derive(Serialize, Deserialize)]
pub struct Kv {
    /// Every key's value, expiry and statistics.
    values: HashMap<String, Entry>,
    /// Open connections by port number.
    conns: HashMap<u64, Conn>,
    /// The listener's port number.
    listener: u64,
    /// The address it is bound to.
    addr: String,
    /// Requests answered.
    requests: u64,
    /// Counts not yet sent to stats.
    pending: Counts,
    /// The generation of the live timer chain.
    generation: u64,
    /// Whether a tick of `generation` is pending.
    ticking: bool,
}

/// A stored value.
#[derive(Serialize, Deserialize, Clone)]
pub struct Entry {
    value: Vec<u8>,
    /// When it expires, in milliseconds since the Unix epoch.
    expires_at: Option<u64>,
    /// Reads that found it (new in 2.0.0).
    hits: u64,
    /// When it was set, in milliseconds since the Unix epoch (new in
    /// 2.0.0; for keys older than the upgrade: the upgrade's time).
    created_at: u64,
}

/// Version 1.1's state (and 1.2's, the same format), as its bytes read.
#[derive(Serialize, Deserialize)]
struct KvV11 {
    values: HashMap<String, EntryV11>,
    conns: HashMap<u64, Conn>,
    listener: u64,
    addr: String,
    #[serde(default)]
    requests: u64,
}

/// Version 1.1's stored value.
#[derive(Serialize, Deserialize)]
struct EntryV11 {
    value: Vec<u8>,
    expires_at: Option<u64>,
}

/// Version 1.0's state, as its bytes read.
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
#[derive(Serialize, Deserialize, Default, Clone)]
pub struct Conn {
    peer: String,
    buf: Vec<u8>,
}

/// Counts for stats: the increments since the last batch sent. The same
/// shape as stats's `Counts` (examples/kv-stats).
#[derive(Serialize, Deserialize, Default, Clone)]
pub struct Counts {
    /// Commands processed, by lowercase name.
    commands: BTreeMap<String, u64>,
    /// Connections accepted.
    connections: u64,
    /// Reads that found their key.
    hits: u64,
    /// Reads that did not.
    misses: u64,
    /// Keys removed because they expired.
    expired: u64,
}

impl Counts {
    fn is_empty(&self) -> bool {
        self.commands.is_empty()
            && self.connections == 0
            && self.hits == 0
            && self.misses == 0
            && self.expired == 0
    }

    fn commands(&self) -> u64 {
        self.commands.values().sum()
    }
}

/// What stats's `Cast` takes.
#[derive(Serialize)]
enum StatsCast<'a> {
    Add(&'a Counts),
}

/// What stats's `Request` takes.
#[derive(Serialize)]
enum StatsRequest<'a> {
    Info { counts: &'a Counts, server: Server, section: Option<String> },
}

/// What only kv knows, for INFO (stats's `Server`).
#[derive(Serialize)]
struct Server {
    version: String,
    addr: String,
    clients: u64,
    keys: u64,
    expires: u64,
}

/// stats's reply to `Info`.
#[derive(Deserialize)]
#[serde(untagged)]
enum StatsReply {
    Text(String),
}

/// Init argument.
#[derive(Deserialize)]
pub struct Start {
    /// Where to listen (`host:port`).
    listen: String,
}

/// Requests of the `call` API: 1.1.0's, plus `Hits`.
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
    /// A key's hit count: -2 if missing.
    Hits(String),
}

/// Casts: 1.1's sweeper's, still accepted.
#[derive(Deserialize)]
pub enum Cast {
    /// Drop every key that has expired.
    Sweep,
}

/// The timer's message: its generation.
#[derive(Serialize, Deserialize)]
pub struct Tick(u64);

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
    fn new(value: Vec<u8>, expires_at: Option<u64>, now: u64) -> Entry {
        Entry { value, expires_at, hits: 0, created_at: now }
    }

    fn live(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

impl Kv {
    /// The live entry of `key`, removing it if it has expired.
    fn entry(&mut self, key: &str, now: u64) -> Option<&mut Entry> {
        if self.values.get(key).is_some_and(|e| !e.live(now)) {
            self.values.remove(key);
            self.pending.expired += 1;
        }
        self.values.get_mut(key)
    }

    /// A read of `key`: counts a hit (on the key and for stats) or a miss.
    fn read(&mut self, key: &str, now: u64) -> Option<&mut Entry> {
        let found = self.entry(key, now).is_some();
        if found {
            self.pending.hits += 1;
        } else {
            self.pending.misses += 1;
        }
        let entry = self.values.get_mut(key)?;
        entry.hits += 1;
        Some(entry)
    }

    fn live_keys(&self, now: u64) -> usize {
        self.values.values().filter(|e| e.live(now)).count()
    }

    /// Removes every expired key.
    fn sweep(&mut self, now: u64) {
        let before = self.values.len();
        self.values.retain(|_, e| e.live(now));
        self.pending.expired += (before - self.values.len()) as u64;
    }

    /// Starts the timer chain if none runs for this generation.
    fn arm(&mut self, ctx: &mut Ctx<'_>) {
        if self.ticking {
            return;
        }
        let me = ctx.pid();
        if ctx.send_after(me, &Tick(self.generation), TICK).is_ok() {
            self.ticking = true;
        }
    }

    /// Sends the pending counts to stats; they stay pending if no stats
    /// process is registered.
    fn flush(&mut self, ctx: &mut Ctx<'_>) {
        if !self.pending.is_empty() && ctx.cast_named("stats", &StatsCast::Add(&self.pending)).is_ok() {
            self.pending = Counts::default();
        }
    }

    /// INFO [section]: the text stats builds, with the pending counts.
    fn info(&mut self, section: Option<String>, now: u64, ctx: &mut Ctx<'_>, out: &mut Vec<u8>) {
        let server = Server {
            version: env!("CARGO_PKG_VERSION").to_string(),
            addr: self.addr.clone(),
            clients: self.conns.len() as u64,
            keys: self.live_keys(now) as u64,
            expires: self.values.values().filter(|e| e.live(now) && e.expires_at.is_some()).count() as u64,
        };
        let request = StatsRequest::Info { counts: &self.pending, server, section };
        match ctx.call_named::<_, StatsReply>("stats", &request, STATS_TIMEOUT) {
            Ok(StatsReply::Text(text)) => {
                self.pending = Counts::default();
                resp::bulk(out, Some(text.as_bytes()));
            }
            Err(e) => resp::error(
                out,
                &format!("ERR stats unavailable: {}", e.message().replace(['\r', '\n'], " ")),
            ),
        }
    }

    /// Runs one request, appending its reply to `out`.
    fn execute(&mut self, args: &[Vec<u8>], ctx: &mut Ctx<'_>, out: &mut Vec<u8>) -> After {
        self.requests += 1;
        let command = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        let n = args.len();
        let now = now_ms();
        match self.pending.commands.get_mut(&command) {
            Some(count) => *count += 1,
            // Unknown commands are counted under one name, so a client
            // cannot grow the table without bound.
            None if KNOWN.contains(&command.as_str()) => {
                self.pending.commands.insert(command.clone(), 1);
            }
            None => *self.pending.commands.entry("unknown".to_string()).or_default() += 1,
        }
        match command.as_str() {
            "ping" if n == 1 => resp::simple(out, "PONG"),
            "ping" if n == 2 => resp::bulk(out, Some(&args[1])),
            "echo" if n == 2 => resp::bulk(out, Some(&args[1])),
            "get" if n == 2 => resp::bulk(out, self.read(&key(&args[1]), now).map(|e| e.value.as_slice())),
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
                self.sweep(now);
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
            "object" if n == 3 && args[1].eq_ignore_ascii_case(b"freq") => {
                match self.entry(&key(&args[2]), now) {
                    Some(entry) => resp::integer(out, entry.hits.min(i64::MAX as u64) as i64),
                    None => resp::error(out, "ERR no such key"),
                }
            }
            "object" if n == 3 && args[1].eq_ignore_ascii_case(b"idletime") => {
                // Seconds since the key was set (2.0.0 keeps no access time).
                match self.entry(&key(&args[2]), now) {
                    Some(entry) => resp::integer(out, (now.saturating_sub(entry.created_at) / 1000) as i64),
                    None => resp::error(out, "ERR no such key"),
                }
            }
            "info" if n <= 2 => {
                let section = args.get(1).map(|s| String::from_utf8_lossy(s).into_owned());
                self.info(section, now, ctx, out);
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
            | "incrby" | "decrby" | "expire" | "pexpire" | "ttl" | "pttl" | "persist" | "info" => {
                resp::wrong_arity(out, &command)
            }
            "object" => {
                resp::error(out, "ERR unknown subcommand or wrong number of arguments for 'object' command")
            }
            _ => resp::unknown_command(out, args),
        }
        After::Continue
    }

    /// SET key value [EX seconds | PX milliseconds]: a new entry (no hits).
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
        self.values.insert(key(&args[1]), Entry::new(args[2].clone(), expires_at, now));
        resp::simple(out, "OK");
    }

    /// INCR and friends: the value as a decimal i64 plus `by`; keeps the
    /// key's expiry, hits and creation time.
    fn incr_by(&mut self, k: &str, by: i64, now: u64, out: &mut Vec<u8>) {
        let entry = match self.entry(k, now) {
            Some(entry) => entry,
            None => self.values.entry(k.to_string()).or_insert(Entry::new(b"0".to_vec(), None, now)),
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
                    after = self.execute(&args, ctx, &mut out);
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
        if self.pending.commands() >= BATCH {
            self.flush(ctx);
        }
    }

    /// This state in 1.1's format.
    fn to_v11(&self) -> KvV11 {
        let values = self
            .values
            .iter()
            .map(|(k, e)| (k.clone(), EntryV11 { value: e.value.clone(), expires_at: e.expires_at }));
        KvV11 {
            values: values.collect(),
            conns: self.conns.clone(),
            listener: self.listener,
            addr: self.addr.clone(),
            requests: self.requests,
        }
    }
}

/// Commands counted under their own name in INFO commandstats.
const KNOWN: [&str; 27] = [
    "ping", "echo", "get", "set", "del", "exists", "dbsize", "incr", "decr", "incrby", "decrby", "expire",
    "pexpire", "ttl", "pttl", "persist", "object", "info", "flushall", "flushdb", "select", "command",
    "config", "quit", "client", "hello", "auth",
];

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
    type Cast = Cast;
    type Info = Tick;

    fn init(start: Start, ctx: &mut Ctx<'_>) -> Result<Self, Error> {
        let (listener, addr) = ctx.listen_at(&start.listen)?;
        ctx.log(LogLevel::Info, &format!("kv {} listening on {addr}", env!("CARGO_PKG_VERSION")));
        let mut kv = Kv {
            values: HashMap::new(),
            conns: HashMap::new(),
            listener: listener.0,
            addr,
            requests: 0,
            pending: Counts::default(),
            generation: now_ms(),
            ticking: false,
        };
        kv.arm(ctx);
        Ok(kv)
    }

    fn handle_call(&mut self, request: Request, ctx: &mut Ctx<'_>) -> Reply {
        self.arm(ctx);
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
            Request::Hits(k) => {
                Reply::Int(self.entry(&k, now).map_or(-2, |e| e.hits.min(i64::MAX as u64) as i64))
            }
        }
    }

    fn handle_cast(&mut self, cast: Cast, ctx: &mut Ctx<'_>) {
        self.arm(ctx);
        match cast {
            Cast::Sweep => self.sweep(now_ms()),
        }
    }

    fn handle_info(&mut self, info: Info<Tick>, ctx: &mut Ctx<'_>) {
        match info {
            Info::Message(Tick(generation)) => {
                if generation != self.generation {
                    // From an earlier life of this process: its chain ends.
                    return;
                }
                self.ticking = false;
                self.sweep(now_ms());
                self.flush(ctx);
                self.arm(ctx);
            }
            Info::Port(event) => {
                self.arm(ctx);
                match event {
                    PortEvent::Accepted { port, peer, .. } => {
                        self.pending.connections += 1;
                        self.conns.insert(port.0, Conn { peer, buf: Vec::new() });
                    }
                    PortEvent::Data { port, bytes } => self.data(port, bytes, ctx),
                    PortEvent::Closed { port, .. } => {
                        self.conns.remove(&port.0);
                    }
                }
            }
            Info::Exit { .. } | Info::Down { .. } => {}
        }
    }

    fn code_change(from: &Version, old: StateBytes, _extra: Extra) -> Result<Self, Error> {
        let now = now_ms();
        let (values, conns, listener, addr, requests) = match (from.major, from.minor) {
            (1, 0) => {
                let v1: KvV1 = old.decode()?;
                let values =
                    v1.values.into_iter().map(|(k, value)| (k, Entry::new(value, None, now))).collect();
                (values, v1.conns, v1.listener, v1.addr, v1.requests)
            }
            (1, _) => {
                let v11: KvV11 = old.decode()?;
                let values = v11
                    .values
                    .into_iter()
                    .map(|(k, e)| (k, Entry::new(e.value, e.expires_at, now)))
                    .collect();
                (values, v11.conns, v11.listener, v11.addr, v11.requests)
            }
            _ => {
                // Our own format (a restart of 2.x, or a downgrade from a
                // later version that wrote it): a new timer chain all the
                // same, the old one's ticks may be gone.
                let mut kv: Kv = old.decode()?;
                kv.generation = kv.generation.max(now).wrapping_add(1);
                kv.ticking = false;
                return Ok(kv);
            }
        };
        // No timer runs for this process yet: the first message it handles
        // starts one.
        Ok(Kv {
            values,
            conns,
            listener,
            addr,
            requests,
            pending: Counts::default(),
            generation: now,
            ticking: false,
        })
    }

    fn downgrade(&self, to: &Version) -> Result<StateBytes, Error> {
        match (to.major, to.minor) {
            (1, 0) => {
                let now = now_ms();
                let values = self
                    .values
                    .iter()
                    .filter(|(_, e)| e.live(now))
                    .map(|(k, e)| (k.clone(), e.value.clone()));
                StateBytes::encode(&KvV1 {
                    values: values.collect(),
                    conns: self.conns.clone(),
                    listener: self.listener,
                    addr: self.addr.clone(),
                    requests: self.requests,
                })
            }
            (1, _) => StateBytes::encode(&self.to_v11()),
            _ => StateBytes::encode(self),
        }
    }
}

relive_abi::export_module!(Kv, name = "kv");
