//! The kv module, version 2.1.0: 2.0.0 (see examples/kv-2.0.0) made safe
//! against any client that can reach its port.
//!
//! - Keys and values are bytes, not text: `\xff` and `\xfe` are two keys
//!   (2.0.0 read every key as lossy UTF-8, so they were one). The state
//!   type changed: `code_change` from 2.0.x turns each text key into its
//!   bytes and keeps every value, expiry, hit count, connection and pending
//!   request; `downgrade` to 2.0.x writes 2.0.0's state back.
//! - Going back to 2.0.0 is refused while a key is not UTF-8 text, which
//!   2.0.0 cannot hold: the error counts them and names the first few, and
//!   kv keeps running 2.1.0 with every key (DEL them, or SET their values
//!   under text keys, then go back). Dropping them instead would make a
//!   rollback lose data that no log line brings back.
//! - Requests go through `resp::Parser`, one per connection: a large or
//!   slowly sent request costs O(n) however it is cut, a large value is
//!   stored in the buffer it was read into (copied once, as in Redis), and
//!   a connection holds no memory once its requests are answered. Other
//!   clients are answered while one sends a large value: each read is
//!   handled as it comes.
//! - Numbers are read as Redis reads them, with its errors: expiries out of
//!   range (`SET k v PX 9223372036854775807` → `ERR invalid expire time in
//!   'set' command`, the same for EXPIRE and PEXPIRE), increments that
//!   would overflow.
//! - Memory goes back after DEL, expiry and FLUSHALL: FLUSHALL replaces the
//!   map, a map whose length falls below a quarter of its capacity is
//!   shrunk, and after FLUSHALL or a DEL that shrank the map kv hands the
//!   freed pages back to the system (`Ctx::release_free_memory`); a large
//!   request's buffers go back as they are freed (the `relive` node fixes
//!   glibc's thresholds: `relive_runtime::return_freed_memory_promptly`).
//!   DBSIZE is O(1) as in Redis (it may count keys that expired since the
//!   last sweep, every second).
//! - New commands: MGET, MSET; SET takes NX, XX, GET, KEEPTTL, EX, PX, EXAT
//!   and PXAT; EXPIRE and PEXPIRE take NX, XX, GT and LT; FLUSHALL takes
//!   ASYNC or SYNC (both run at once).
//!
//! - Its listener takes Redis's `maxclients` (default 10000; a client over
//!   it gets Redis's error and a close) and `timeout` (seconds before an
//!   idle client is disconnected; default 0, never) from the init
//!   arguments. A process upgraded from 2.0.x keeps 2.0's listener (its
//!   socket and clients) and gives it 2.1.0's limits in its first callback
//!   after the upgrade (`Ctx::set_listen_options`): `maxclients` and
//!   `timeout` from the release's `[config]` (code_change has no init
//!   arguments), with the same defaults; a later change of those keys
//!   applies the same way. A connection stops reading while 256 KiB of
//!   its bytes wait unhandled here, so other clients' requests never queue
//!   behind more than that of a large value.
//!
//! The rest is 2.0.0's: active expiry on its own timer (with a generation,
//! so one chain runs), counts cast to `stats` in batches, INFO answered by
//! stats, and the `call` API (`Request`), whose keys are text.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relive_abi::prelude::*;

/// How often expired keys are removed and counts flushed.
const TICK: Duration = Duration::from_secs(1);
/// Commands after which counts are sent to stats without waiting for a tick.
const BATCH: u64 = 256;
/// How long INFO waits for stats.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);
/// Maps smaller than this are never shrunk (the rehash is not worth it).
const SHRINK_FROM: usize = 1024;
/// Keys that are not UTF-8 named in the error of a refused downgrade.
const NAMED_IN_ERRORS: usize = 3;

/// A key: bytes (binary-safe). Looked up by `&[u8]` without a copy.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Hash)]
#[serde(transparent)]
pub struct Key(#[serde(with = "resp::bytes")] Box<[u8]>);

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl From<&[u8]> for Key {
    fn from(bytes: &[u8]) -> Key {
        Key(bytes.into())
    }
}

/// The state: the values, the connections this process serves, the counts
/// not yet sent to stats, and the timer's generation.
#[derive(Serialize, Deserialize)]
pub struct Kv {
    /// Every key's value, expiry and statistics.
    values: HashMap<Key, Entry>,
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
    /// The listener has this version's limits (false after an upgrade from
    /// 2.0, whose listener had none, until the first callback).
    #[serde(default)]
    listener_current: bool,
}

/// A stored value.
#[derive(Serialize, Deserialize, Clone)]
pub struct Entry {
    /// The value's bytes.
    #[serde(with = "resp::bytes")]
    value: Box<[u8]>,
    /// When it expires, in milliseconds since the Unix epoch (at most
    /// `i64::MAX`, as in Redis).
    expires_at: Option<u64>,
    /// Reads that found it.
    hits: u64,
    /// When it was set, in milliseconds since the Unix epoch.
    created_at: u64,
}

/// A connection: its peer, and its parser (which holds the bytes of a
/// request not yet complete).
#[derive(Serialize, Deserialize, Default)]
pub struct Conn {
    peer: String,
    parser: resp::Parser,
}

/// Version 2.0's state, as its bytes read (and as 2.0.0 reads them back:
/// serde's forms, keys as text, bytes as arrays of integers).
#[derive(Serialize, Deserialize)]
struct KvV20 {
    values: HashMap<String, EntryV20>,
    conns: HashMap<u64, ConnV20>,
    listener: u64,
    addr: String,
    requests: u64,
    pending: Counts,
    generation: u64,
    ticking: bool,
}

/// Version 2.0's stored value.
#[derive(Serialize, Deserialize)]
struct EntryV20 {
    value: Vec<u8>,
    expires_at: Option<u64>,
    hits: u64,
    created_at: u64,
}

/// Version 2.0's connection: the bytes of a request not yet complete.
#[derive(Serialize, Deserialize)]
struct ConnV20 {
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

    /// Counts one command, under its own name if kv knows it, else under
    /// `unknown` (a client cannot grow the table without bound).
    fn command(&mut self, name: &str) {
        match self.commands.get_mut(name) {
            Some(count) => *count += 1,
            None if KNOWN.contains(&name) => {
                self.commands.insert(name.to_string(), 1);
            }
            None => *self.commands.entry("unknown".to_string()).or_default() += 1,
        }
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
    /// Clients connected at once, as Redis's `maxclients`: one more is
    /// sent [`MAX_CLIENTS_REACHED`] and closed.
    #[serde(default = "default_maxclients")]
    maxclients: u32,
    /// Seconds a client may stay idle before it is disconnected, as
    /// Redis's `timeout`; 0 (the default) never.
    #[serde(default)]
    timeout: u64,
}

/// Redis's default `maxclients`.
fn default_maxclients() -> u32 {
    10_000
}

/// The client limits in the node's configuration (`[config] maxclients`,
/// `timeout`, as [`Start`]'s), for a listener kv did not open itself.
#[derive(Deserialize)]
struct ClientLimits {
    #[serde(default = "default_maxclients")]
    maxclients: u32,
    #[serde(default)]
    timeout: u64,
}

impl Default for ClientLimits {
    fn default() -> ClientLimits {
        ClientLimits { maxclients: default_maxclients(), timeout: 0 }
    }
}

/// The listener's options for Redis's `maxclients` and `timeout`.
fn listen_options(maxclients: u32, timeout: u64) -> ListenOptions {
    ListenOptions {
        max_connections: Some(maxclients),
        refusal: Some(MAX_CLIENTS_REACHED.to_vec()),
        idle_timeout: (timeout > 0).then(|| Duration::from_secs(timeout)),
        max_unhandled_bytes: Some(MAX_UNHANDLED_BYTES),
        ..ListenOptions::default()
    }
}

/// A connection's bytes that may wait in this process's mailbox before
/// its port stops reading. One process serves every client, so this is
/// what a PING can find queued ahead of it while another client sends a
/// large value: a few reads, not the node's default 4 MiB.
const MAX_UNHANDLED_BYTES: u64 = 256 * 1024;

/// What Redis tells a client over `maxclients`.
const MAX_CLIENTS_REACHED: &[u8] = b"-ERR max number of clients reached\r\n";

/// Requests of the `call` API: 2.0.0's (keys given as text).
#[derive(Deserialize)]
pub enum Request {
    /// A key's value as text, bytes that are not UTF-8 replaced (`null`
    /// if unset or expired).
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

/// How SET and EXPIRE read a time.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// EX, EXPIRE: seconds from now.
    Seconds,
    /// PX, PEXPIRE: milliseconds from now.
    Millis,
    /// EXAT: a Unix time in seconds.
    UnixSeconds,
    /// PXAT: a Unix time in milliseconds.
    UnixMillis,
}

impl Unit {
    fn in_seconds(self) -> bool {
        matches!(self, Unit::Seconds | Unit::UnixSeconds)
    }

    fn relative(self) -> bool {
        matches!(self, Unit::Seconds | Unit::Millis)
    }
}

/// SET's options, as Redis reads them.
#[derive(Default)]
struct SetOptions {
    nx: bool,
    xx: bool,
    get: bool,
    keep_ttl: bool,
    /// When the value expires, in milliseconds since the Unix epoch.
    expires_at: Option<u64>,
}

impl SetOptions {
    /// The options after `SET key value` at time `now`, or Redis's error:
    /// first a syntax error (an option may repeat, the last value winning,
    /// but not meet one it excludes), then the expiry's.
    fn parse(args: &resp::Request<'_>, now: u64) -> Result<SetOptions, &'static str> {
        const SYNTAX: &str = "ERR syntax error";
        let mut options = SetOptions::default();
        let mut expire: Option<(Unit, &[u8])> = None;
        let mut i = 3;
        while let Some(option) = args.get(i) {
            let unit = match option.to_ascii_lowercase().as_slice() {
                b"nx" if !options.xx => {
                    options.nx = true;
                    None
                }
                b"xx" if !options.nx => {
                    options.xx = true;
                    None
                }
                b"get" => {
                    options.get = true;
                    None
                }
                b"keepttl" if expire.is_none() => {
                    options.keep_ttl = true;
                    None
                }
                b"ex" => Some(Unit::Seconds),
                b"px" => Some(Unit::Millis),
                b"exat" => Some(Unit::UnixSeconds),
                b"pxat" => Some(Unit::UnixMillis),
                _ => return Err(SYNTAX),
            };
            if let Some(unit) = unit {
                let value = args.get(i + 1).ok_or(SYNTAX)?;
                if options.keep_ttl || expire.is_some_and(|(other, _)| other != unit) {
                    return Err(SYNTAX);
                }
                expire = Some((unit, value));
                i += 1;
            }
            i += 1;
        }
        options.expires_at = expire.map(|(unit, text)| set_expiry(unit, text, now)).transpose()?;
        Ok(options)
    }
}

/// EXPIRE's and PEXPIRE's conditions.
#[derive(Default)]
struct ExpireFlags {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
}

impl ExpireFlags {
    /// The flags after `EXPIRE key time`, or Redis's error.
    fn parse(args: &resp::Request<'_>) -> Result<ExpireFlags, String> {
        let mut flags = ExpireFlags::default();
        for option in args.iter().skip(3) {
            match option.to_ascii_lowercase().as_slice() {
                b"nx" => flags.nx = true,
                b"xx" => flags.xx = true,
                b"gt" => flags.gt = true,
                b"lt" => flags.lt = true,
                _ => return Err(format!("ERR Unsupported option {}", resp::lossy(option))),
            }
        }
        if flags.nx && (flags.xx || flags.gt || flags.lt) {
            return Err("ERR NX and XX, GT or LT options at the same time are not compatible".into());
        }
        if flags.gt && flags.lt {
            return Err("ERR GT and LT options at the same time are not compatible".into());
        }
        Ok(flags)
    }

    /// Whether a key whose expiry is `current` takes the expiry `when`.
    fn allow(&self, current: Option<u64>, when: i64) -> bool {
        let current = current.map(|at| at as i64);
        !(self.nx && current.is_some()
            || self.xx && current.is_none()
            // GT: a key without expiry counts as expiring never.
            || self.gt && current.is_none_or(|at| when <= at)
            || self.lt && current.is_some_and(|at| when >= at))
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Entry {
    fn new(value: &[u8], expires_at: Option<u64>, now: u64) -> Entry {
        Entry { value: value.into(), expires_at, hits: 0, created_at: now }
    }

    /// An entry that owns `value` (a large one is not copied: its spare
    /// capacity is given back in place).
    fn from_vec(value: Vec<u8>, expires_at: Option<u64>, now: u64) -> Entry {
        Entry { value: value.into_boxed_slice(), expires_at, hits: 0, created_at: now }
    }

    fn live(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

/// The live entry of `key` in `values`, removing it (counted as expired in
/// `pending`) if it has expired. Borrows only `values` for the entry, so a
/// caller can count in `pending` while it holds it. A hit costs two lookups
/// (std's map cannot hand back an entry it might also have to remove); the
/// commands of a benchmark's load use [`with_live_entry`], one lookup.
fn live_entry<'a>(
    values: &'a mut HashMap<Key, Entry>,
    pending: &mut Counts,
    key: &[u8],
    now: u64,
) -> Option<&'a mut Entry> {
    if !values.get(key)?.live(now) {
        expire(values, pending, key);
        return None;
    }
    values.get_mut(key)
}

/// `f` of the live entry of `key` in `values`, in one lookup, or `None` if
/// there is none (an expired entry is removed, as [`live_entry`] does).
fn with_live_entry<R>(
    values: &mut HashMap<Key, Entry>,
    pending: &mut Counts,
    key: &[u8],
    now: u64,
    f: impl FnOnce(&mut Entry) -> R,
) -> Option<R> {
    match values.get_mut(key) {
        Some(entry) if entry.live(now) => return Some(f(entry)),
        Some(_) => {}
        None => return None,
    }
    expire(values, pending, key);
    None
}

/// Removes `key`, found expired.
fn expire(values: &mut HashMap<Key, Entry>, pending: &mut Counts, key: &[u8]) {
    values.remove(key);
    shrink(values);
    pending.expired += 1;
}

/// INCR's step on an entry: the value as a decimal i64 plus `by`, answered.
fn increment(entry: &mut Entry, by: i64, out: &mut Vec<u8>) {
    let Some(value) = resp::int_arg(&entry.value) else {
        return resp::error(out, "ERR value is not an integer or out of range");
    };
    match value.checked_add(by) {
        Some(n) => {
            // The reply's digits are the new value: written once, and
            // stored in place while the number keeps its length.
            let start = out.len();
            resp::integer(out, n);
            let digits = &out[start + 1..out.len() - 2];
            if entry.value.len() == digits.len() {
                entry.value.copy_from_slice(digits);
            } else {
                entry.value = digits.into();
            }
        }
        None => resp::error(out, "ERR increment or decrement would overflow"),
    }
}

/// Gives memory back once a map holds under a quarter of its capacity.
fn shrink<K: Eq + Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() >= SHRINK_FROM && map.len() * 4 < map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

/// The command's name in lowercase, without allocating (`""` for a name
/// longer than any command kv knows, or not UTF-8).
fn command_name<'a>(raw: &[u8], lower: &'a mut [u8; 16]) -> &'a str {
    let Some(lower) = lower.get_mut(..raw.len()) else { return "" };
    for (to, from) in lower.iter_mut().zip(raw) {
        *to = from.to_ascii_lowercase();
    }
    std::str::from_utf8(lower).unwrap_or("")
}

impl Kv {
    /// The live entry of `key`, removing it if it has expired.
    fn entry(&mut self, key: &[u8], now: u64) -> Option<&mut Entry> {
        live_entry(&mut self.values, &mut self.pending, key, now)
    }

    /// Removes `key` (live or not), shrinking the map if it got sparse.
    fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let removed = self.values.remove(key);
        if removed.is_some() {
            shrink(&mut self.values);
        }
        removed
    }

    /// A read of `key` answered as a bulk string (null if it is not
    /// there): counts a hit (on the key and for stats) or a miss. Says
    /// whether it was there.
    fn read(&mut self, key: &[u8], now: u64, out: &mut Vec<u8>) -> bool {
        let found = with_live_entry(&mut self.values, &mut self.pending, key, now, |entry| {
            entry.hits += 1;
            resp::bulk(out, Some(&entry.value));
        });
        if found.is_some() {
            self.pending.hits += 1;
        } else {
            self.pending.misses += 1;
            resp::bulk(out, None);
        }
        found.is_some()
    }

    fn live_keys(&self, now: u64) -> usize {
        self.values.values().filter(|e| e.live(now)).count()
    }

    /// Removes every expired key.
    fn sweep(&mut self, now: u64) {
        let before = self.values.len();
        self.values.retain(|_, e| e.live(now));
        if self.values.len() < before {
            self.pending.expired += (before - self.values.len()) as u64;
            shrink(&mut self.values);
        }
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
            keys: self.values.len() as u64,
            expires: self.values.values().filter(|e| e.live(now) && e.expires_at.is_some()).count() as u64,
        };
        let request = StatsRequest::Info { counts: &self.pending, server, section };
        match ctx.call_named::<_, StatsReply>("stats", &request, STATS_TIMEOUT) {
            Ok(StatsReply::Text(text)) => {
                self.pending = Counts::default();
                resp::bulk(out, Some(text.as_bytes()));
            }
            Err(e) => resp::error(out, &format!("ERR stats unavailable: {}", e.message())),
        }
    }

    /// Runs one request at time `now`, appending its reply to `out`.
    fn execute(
        &mut self,
        args: &mut resp::Request<'_>,
        now: u64,
        ctx: &mut Ctx<'_>,
        out: &mut Vec<u8>,
    ) -> After {
        self.requests += 1;
        let mut lower = [0u8; 16];
        let command = command_name(&args[0], &mut lower);
        self.pending.command(command);
        let n = args.len();
        match command {
            "ping" if n == 1 => resp::simple(out, "PONG"),
            "ping" | "echo" if n == 2 => resp::bulk(out, Some(&args[1])),
            "get" if n == 2 => {
                self.read(&args[1], now, out);
            }
            "set" if n >= 3 => self.set(args, now, out),
            "mget" if n >= 2 => {
                resp::array(out, n - 1);
                for key in args.iter().skip(1) {
                    self.read(key, now, out);
                }
            }
            "mset" if n >= 3 && n % 2 == 1 => {
                for i in (1..n).step_by(2) {
                    let key = Key::from(&args[i]);
                    self.values.insert(key, Entry::from_vec(args.take(i + 1), None, now));
                }
                resp::simple(out, "OK");
            }
            "del" if n >= 2 => {
                let capacity = self.values.capacity();
                let removed =
                    args.iter().skip(1).filter(|k| self.remove(k).is_some_and(|e| e.live(now))).count();
                if self.values.capacity() < capacity {
                    // The map shrank: a large share of kv's memory was freed.
                    ctx.release_free_memory();
                }
                resp::integer(out, removed as i64);
            }
            "exists" if n >= 2 => {
                let found = args.iter().skip(1).filter(|k| self.entry(k, now).is_some()).count();
                resp::integer(out, found as i64);
            }
            "dbsize" if n == 1 => resp::integer(out, self.values.len() as i64),
            "incr" if n == 2 => self.incr_by(&args[1], 1, now, out),
            "decr" if n == 2 => self.incr_by(&args[1], -1, now, out),
            "incrby" | "decrby" if n == 3 => match resp::int_arg(&args[2]) {
                Some(by) if command == "incrby" => self.incr_by(&args[1], by, now, out),
                Some(i64::MIN) => resp::error(out, "ERR decrement would overflow"),
                Some(by) => self.incr_by(&args[1], -by, now, out),
                None => resp::error(out, "ERR value is not an integer or out of range"),
            },
            "expire" if n >= 3 => self.expire(args, Unit::Seconds, command, now, out),
            "pexpire" if n >= 3 => self.expire(args, Unit::Millis, command, now, out),
            "ttl" | "pttl" if n == 2 => {
                let ms = self.ttl_ms(&args[1], now);
                // Redis rounds TTL to the nearest second.
                let reply = if ms < 0 || command == "pttl" { ms } else { ms.saturating_add(500) / 1000 };
                resp::integer(out, reply);
            }
            "persist" if n == 2 => match self.entry(&args[1], now) {
                Some(entry) if entry.expires_at.is_some() => {
                    entry.expires_at = None;
                    resp::integer(out, 1);
                }
                _ => resp::integer(out, 0),
            },
            "object" if n == 3 && args[1].eq_ignore_ascii_case(b"freq") => match self.entry(&args[2], now) {
                Some(entry) => resp::integer(out, entry.hits.min(i64::MAX as u64) as i64),
                None => resp::error(out, "ERR no such key"),
            },
            "object" if n == 3 && args[1].eq_ignore_ascii_case(b"idletime") => {
                // Seconds since the key was set (kv keeps no access time).
                match self.entry(&args[2], now) {
                    Some(entry) => resp::integer(out, (now.saturating_sub(entry.created_at) / 1000) as i64),
                    None => resp::error(out, "ERR no such key"),
                }
            }
            "info" if n <= 2 => {
                let section = args.get(1).map(resp::lossy);
                self.info(section, now, ctx, out);
            }
            "flushall" | "flushdb" if n == 1 || n == 2 && is_flush_mode(&args[1]) => {
                // A new map: the old one's memory goes back at once (a
                // cleared map would keep its capacity).
                self.values = HashMap::new();
                // glibc keeps the freed pages; hand them back (a node that
                // held 1M keys otherwise stays at 77 MB, Redis at 11 MB).
                ctx.release_free_memory();
                resp::simple(out, "OK");
            }
            "flushall" | "flushdb" => resp::error(out, "ERR syntax error"),
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
            "ping" | "echo" | "get" | "set" | "mget" | "mset" | "del" | "exists" | "dbsize" | "select"
            | "incr" | "decr" | "incrby" | "decrby" | "expire" | "pexpire" | "ttl" | "pttl" | "persist"
            | "info" => resp::wrong_arity(out, command),
            "object" => {
                resp::error(out, "ERR unknown subcommand or wrong number of arguments for 'object' command")
            }
            _ => resp::unknown_command(out, args.iter()),
        }
        After::Continue
    }

    /// SET key value [NX | XX] [GET] [EX s | PX ms | EXAT s | PXAT ms |
    /// KEEPTTL], as Redis 7 runs it: options first (a syntax error), then
    /// the expiry (its errors), then GET's old value, then NX/XX.
    fn set(&mut self, args: &mut resp::Request<'_>, now: u64, out: &mut Vec<u8>) {
        let options = match SetOptions::parse(args, now) {
            Ok(options) => options,
            Err(error) => return resp::error(out, error),
        };
        if !(options.get || options.nx || options.xx || options.keep_ttl) {
            // The plain SET, most of a write load: one lookup, and an
            // existing key is overwritten in place (no copy of the key).
            let entry = Entry::from_vec(args.take(2), options.expires_at, now);
            match self.values.get_mut(&args[1]) {
                Some(old) => {
                    if !old.live(now) {
                        self.pending.expired += 1;
                    }
                    *old = entry;
                }
                None => {
                    self.values.insert(Key::from(&args[1]), entry);
                }
            }
            return resp::simple(out, "OK");
        }
        let key = Key::from(&args[1]);
        let found = if options.get { self.read(&key.0, now, out) } else { self.entry(&key.0, now).is_some() };
        if options.nx && found || options.xx && !found {
            if !options.get {
                resp::bulk(out, None);
            }
            return;
        }
        let kept = if options.keep_ttl { self.values.get(&key).and_then(|e| e.expires_at) } else { None };
        // A large value is the parser's own buffer, not a copy.
        let value = args.take(2);
        self.values.insert(key, Entry::from_vec(value, options.expires_at.or(kept), now));
        if !options.get {
            resp::simple(out, "OK");
        }
    }

    /// EXPIRE and PEXPIRE key time [NX | XX | GT | LT], as Redis 7 runs
    /// them: a time that overflows once in milliseconds from now is an
    /// error, a time in the past deletes the key.
    fn expire(&mut self, args: &resp::Request<'_>, unit: Unit, command: &str, now: u64, out: &mut Vec<u8>) {
        let flags = match ExpireFlags::parse(args) {
            Ok(flags) => flags,
            Err(error) => return resp::error(out, &error),
        };
        let Some(time) = resp::int_arg(&args[2]) else {
            return resp::error(out, "ERR value is not an integer or out of range");
        };
        let when = if unit == Unit::Seconds { time.checked_mul(1000) } else { Some(time) };
        let Some(when) = when.and_then(|ms| ms.checked_add(now as i64)) else {
            return resp::error(out, &format!("ERR invalid expire time in '{command}' command"));
        };
        let key = &args[1];
        let Some(entry) = self.entry(key, now) else { return resp::integer(out, 0) };
        if !flags.allow(entry.expires_at, when) {
            return resp::integer(out, 0);
        }
        if when <= now as i64 {
            self.remove(key);
        } else {
            entry.expires_at = Some(when as u64);
        }
        resp::integer(out, 1);
    }

    /// INCR and friends: the value as a decimal i64 plus `by`; keeps the
    /// key's expiry, hits and creation time.
    fn incr_by(&mut self, key: &[u8], by: i64, now: u64, out: &mut Vec<u8>) {
        let done =
            with_live_entry(&mut self.values, &mut self.pending, key, now, |entry| increment(entry, by, out));
        if done.is_none() {
            let entry = self.values.entry(Key::from(key)).or_insert(Entry::new(b"0", None, now));
            increment(entry, by, out);
        }
    }

    fn ttl_ms(&mut self, key: &[u8], now: u64) -> i64 {
        match self.entry(key, now) {
            None => -2,
            Some(Entry { expires_at: None, .. }) => -1,
            Some(Entry { expires_at: Some(at), .. }) => at.saturating_sub(now).min(i64::MAX as u64) as i64,
        }
    }

    /// Bytes arrived on `port`: answers every complete request, in one
    /// write.
    fn data(&mut self, port: PortId, bytes: Vec<u8>, ctx: &mut Ctx<'_>) {
        let mut parser = std::mem::take(&mut self.conns.entry(port.0).or_default().parser);
        parser.feed(bytes);
        // One clock read for the requests of one read, as Redis reads it
        // once per event loop turn.
        let now = now_ms();
        let (mut out, mut after) = (Vec::new(), After::Continue);
        while after == After::Continue {
            match parser.next_request() {
                Ok(Some(mut request)) => after = self.execute(&mut request, now, ctx, &mut out),
                Ok(None) => break,
                Err(error) => {
                    error.reply(&mut out);
                    after = After::Close;
                }
            }
        }
        if !out.is_empty() {
            let _ = ctx.port_send(port, &out);
        }
        if after == After::Close {
            self.close(port, ctx);
        } else if let Some(conn) = self.conns.get_mut(&port.0) {
            conn.parser = parser;
        }
        if self.pending.commands() >= BATCH {
            self.flush(ctx);
        }
    }

    /// Gives the listener this version's limits if it does not have them
    /// yet (see the crate doc).
    fn update_listener(&mut self, ctx: &mut Ctx<'_>) {
        if self.listener_current {
            return;
        }
        self.listener_current = true;
        let limits: ClientLimits = ctx.config().unwrap_or_default();
        let options = listen_options(limits.maxclients, limits.timeout);
        match ctx.set_listen_options(PortId(self.listener), &options) {
            Ok(()) => ctx.log(
                LogLevel::Info,
                &format!(
                    "kv {}: listener {} now takes maxclients {} and timeout {}",
                    env!("CARGO_PKG_VERSION"),
                    self.addr,
                    limits.maxclients,
                    limits.timeout
                ),
            ),
            Err(error) => ctx.log(
                LogLevel::Warn,
                &format!(
                    "kv {}: the listener keeps its limits: {}",
                    env!("CARGO_PKG_VERSION"),
                    error.message()
                ),
            ),
        }
    }

    fn close(&mut self, port: PortId, ctx: &mut Ctx<'_>) {
        self.conns.remove(&port.0);
        shrink(&mut self.conns);
        let _ = ctx.port_close(port);
    }

    /// This state in 2.0's format, unless a key is not UTF-8 (2.0.0 keeps
    /// keys as text): then an error that counts and names them.
    fn to_v20(&self) -> Result<KvV20, Error> {
        let mut values = HashMap::with_capacity(self.values.len());
        let mut binary = Vec::new();
        for (key, entry) in &self.values {
            match std::str::from_utf8(&key.0) {
                Ok(text) => {
                    let old = EntryV20 {
                        value: entry.value.to_vec(),
                        expires_at: entry.expires_at,
                        hits: entry.hits,
                        created_at: entry.created_at,
                    };
                    values.insert(text.to_string(), old);
                }
                Err(_) => binary.push(&key.0),
            }
        }
        if !binary.is_empty() {
            binary.sort();
            let named: Vec<String> = binary.iter().take(NAMED_IN_ERRORS).map(|k| resp::quoted(k)).collect();
            let more = binary.len().saturating_sub(NAMED_IN_ERRORS);
            return Err(Error::new(format!(
                "kv 2.1.0 refuses to go back to 2.0, which keeps keys as UTF-8 text: {} key{} {} not ({}{}); \
                 kv keeps running 2.1.0 with every key. DEL them (or SET their values under text keys), then go back again",
                binary.len(),
                if binary.len() == 1 { "" } else { "s" },
                if binary.len() == 1 { "is" } else { "are" },
                named.join(", "),
                if more > 0 { format!(" and {more} more") } else { String::new() },
            )));
        }
        let conns = self
            .conns
            .iter()
            .map(|(&port, conn)| {
                (port, ConnV20 { peer: conn.peer.clone(), buf: conn.parser.pending().to_vec() })
            })
            .collect();
        Ok(KvV20 {
            values,
            conns,
            listener: self.listener,
            addr: self.addr.clone(),
            requests: self.requests,
            pending: self.pending.clone(),
            generation: self.generation,
            ticking: self.ticking,
        })
    }

    /// 2.0's state in this version's format.
    fn from_v20(old: KvV20) -> Kv {
        let values = old
            .values
            .into_iter()
            .map(|(key, e)| {
                let entry = Entry {
                    value: e.value.into(),
                    expires_at: e.expires_at,
                    hits: e.hits,
                    created_at: e.created_at,
                };
                (Key(key.into_bytes().into()), entry)
            })
            .collect();
        let conns = old
            .conns
            .into_iter()
            .map(|(port, conn)| {
                (port, Conn { peer: conn.peer, parser: resp::Parser::from_pending(conn.buf) })
            })
            .collect();
        Kv {
            values,
            conns,
            listener: old.listener,
            addr: old.addr,
            requests: old.requests,
            pending: old.pending,
            generation: old.generation,
            ticking: old.ticking,
            listener_current: false,
        }
    }
}

/// SET's expiry in milliseconds since the Unix epoch, or Redis's error.
fn set_expiry(unit: Unit, text: &[u8], now: u64) -> Result<u64, &'static str> {
    const INVALID: &str = "ERR invalid expire time in 'set' command";
    let time = resp::int_arg(text).ok_or("ERR value is not an integer or out of range")?;
    if time <= 0 || unit.in_seconds() && time > i64::MAX / 1000 {
        return Err(INVALID);
    }
    let ms = if unit.in_seconds() { time * 1000 } else { time };
    let at = if unit.relative() { ms.checked_add(now as i64).ok_or(INVALID)? } else { ms };
    Ok(at as u64)
}

/// FLUSHALL's and FLUSHDB's optional mode.
fn is_flush_mode(arg: &[u8]) -> bool {
    arg.eq_ignore_ascii_case(b"async") || arg.eq_ignore_ascii_case(b"sync")
}

/// Commands counted under their own name in INFO commandstats.
const KNOWN: [&str; 29] = [
    "ping", "echo", "get", "set", "mget", "mset", "del", "exists", "dbsize", "incr", "decr", "incrby",
    "decrby", "expire", "pexpire", "ttl", "pttl", "persist", "object", "info", "flushall", "flushdb",
    "select", "command", "config", "quit", "client", "hello", "auth",
];

/// CONFIG GET for what clients ask (redis-benchmark: save, appendonly);
/// CONFIG SET/RESETSTAT are accepted and ignored.
fn config(args: &resp::Request<'_>, out: &mut Vec<u8>) {
    let sub = args.get(1).map(<[u8]>::to_ascii_lowercase);
    match sub.as_deref() {
        Some(b"get") if args.len() >= 3 => {
            const KNOWN: [(&str, &str); 3] = [("save", ""), ("appendonly", "no"), ("databases", "1")];
            let mut pairs = Vec::new();
            for pattern in args.iter().skip(2) {
                let pattern = pattern.to_ascii_lowercase();
                for (name, value) in KNOWN {
                    if (pattern == b"*" || pattern == name.as_bytes())
                        && !pairs.iter().any(|(n, _)| *n == name)
                    {
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
        Some(b"set") | Some(b"resetstat") => resp::simple(out, "OK"),
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
        let limits = listen_options(start.maxclients, start.timeout);
        let (listener, addr) = ctx.listen_with(&start.listen, &limits)?;
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
            listener_current: true,
        };
        kv.arm(ctx);
        Ok(kv)
    }

    fn handle_call(&mut self, request: Request, ctx: &mut Ctx<'_>) -> Reply {
        self.arm(ctx);
        self.update_listener(ctx);
        let now = now_ms();
        match request {
            Request::Get(k) => Reply::Value(self.entry(k.as_bytes(), now).map(|e| resp::lossy(&e.value))),
            Request::Keys => Reply::Number(self.live_keys(now) as u64),
            Request::Connections => Reply::Number(self.conns.len() as u64),
            Request::Addr => Reply::Text(self.addr.clone()),
            Request::Version => Reply::Text(env!("CARGO_PKG_VERSION").to_string()),
            Request::Requests => Reply::Number(self.requests),
            Request::Ttl(k) => Reply::Int(self.ttl_ms(k.as_bytes(), now)),
            Request::Hits(k) => {
                Reply::Int(self.entry(k.as_bytes(), now).map_or(-2, |e| e.hits.min(i64::MAX as u64) as i64))
            }
        }
    }

    fn handle_cast(&mut self, cast: Cast, ctx: &mut Ctx<'_>) {
        self.arm(ctx);
        self.update_listener(ctx);
        match cast {
            Cast::Sweep => self.sweep(now_ms()),
        }
    }

    fn handle_info(&mut self, info: Info<Tick>, ctx: &mut Ctx<'_>) {
        self.update_listener(ctx);
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
                        self.conns.insert(port.0, Conn { peer, parser: resp::Parser::new() });
                    }
                    PortEvent::Data { port, bytes } => self.data(port, bytes, ctx),
                    PortEvent::Closed { port, .. } => {
                        self.conns.remove(&port.0);
                        shrink(&mut self.conns);
                    }
                }
            }
            Info::Exit { .. } | Info::Down { .. } => {}
        }
    }

    fn config_change(&mut self, change: ConfigChange, ctx: &mut Ctx<'_>) -> Result<(), Error> {
        let limits = |config: Result<ClientLimits, Error>| config.map(|l| (l.maxclients, l.timeout)).ok();
        if limits(change.old_config()) != limits(change.new_config()) {
            self.listener_current = false;
            self.update_listener(ctx);
        }
        Ok(())
    }

    fn code_change(from: &Version, old: StateBytes, _extra: Extra) -> Result<Self, Error> {
        let mut kv = match (from.major, from.minor) {
            (2, 0) => Kv::from_v20(old.decode()?),
            // Our own format: a restart of 2.1, or a downgrade from a later
            // 2.x that writes it.
            (2, _) => old.decode()?,
            _ => {
                return Err(Error::new(format!(
                    "kv 2.1.0 upgrades live from 2.0.x only, not from {from}: deploy kv 2.0.0 first"
                )));
            }
        };
        // A new timer chain: the old one's ticks are ignored (their
        // generation is older), and the first message handled starts it.
        kv.generation = kv.generation.max(now_ms()).wrapping_add(1);
        kv.ticking = false;
        Ok(kv)
    }

    fn downgrade(&self, to: &Version) -> Result<StateBytes, Error> {
        match (to.major, to.minor) {
            (2, 0) => StateBytes::encode(&self.to_v20()?),
            (2, _) => StateBytes::encode(self),
            _ => Err(Error::new(format!("kv 2.1.0 goes back live to 2.0.x only, not to {to}"))),
        }
    }
}

relive_abi::export_module!(Kv, name = "kv");

#[cfg(test)]
mod tests {
    use super::*;

    fn kv_with(keys: &[&[u8]]) -> Kv {
        let mut kv = Kv {
            values: HashMap::new(),
            conns: HashMap::new(),
            listener: 1,
            addr: "127.0.0.1:6380".into(),
            requests: 7,
            pending: Counts::default(),
            generation: 1,
            ticking: true,
            listener_current: true,
        };
        for key in keys {
            kv.values.insert(Key::from(*key), Entry::new(b"v", Some(u64::MAX >> 1), 5));
        }
        kv
    }

    #[test]
    fn the_way_down_counts_and_names_keys_2_0_cannot_hold() {
        let v20 = Version::new(2, 0, 0);
        let kv = kv_with(&[b"text", b"\xff", b"\xfe", b"\x80a", b"\xc3", b"caf\xc3\xa9"]);
        let error = kv.downgrade(&v20).expect_err("refused");
        assert!(
            error.message().contains(r#"4 keys are not ("\x80a", "\xc3", "\xfe" and 1 more)"#),
            "{}",
            error.message()
        );
        assert!(error.message().contains("kv keeps running 2.1.0 with every key"), "{}", error.message());
        assert!(kv.downgrade(&Version::new(1, 1, 0)).is_err(), "only 2.0 is a way down");

        // Text keys only: 2.0's state, which comes back up whole, a
        // pending request included.
        let mut kv = kv_with(&[b"text", b"caf\xc3\xa9"]);
        let mut parser = resp::Parser::new();
        parser.feed(b"*2\r\n$3\r\nGET".to_vec());
        kv.conns.insert(9, Conn { peer: "peer".into(), parser });
        let down = kv.downgrade(&v20).expect("every key is text");
        let as_v20: KvV20 = down.decode().unwrap();
        assert_eq!(as_v20.values.len(), 2);
        assert_eq!(as_v20.values["café"].value, b"v");
        assert_eq!(as_v20.conns[&9].buf, b"*2\r\n$3\r\nGET");
        let up = Kv::code_change(&v20, down, Extra(Vec::new())).expect("2.0's state converts");
        assert_eq!(up.values.len(), 2);
        assert_eq!(up.values.get(b"caf\xc3\xa9".as_slice()).map(|e| e.expires_at), Some(Some(u64::MAX >> 1)));
        assert_eq!(&*up.conns[&9].parser.pending(), b"*2\r\n$3\r\nGET");
        assert_eq!(up.requests, 7);
        assert!(!up.ticking, "a new timer chain starts");
        assert!(Kv::code_change(&Version::new(1, 1, 0), StateBytes(Vec::new()), Extra(Vec::new())).is_err());
    }

    #[test]
    fn deleting_most_keys_gives_the_map_memory_back() {
        let keys: Vec<Vec<u8>> = (0..100_000u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let mut kv = kv_with(&refs);
        let full = kv.values.capacity();
        for key in &keys[..99_000] {
            kv.remove(key);
        }
        assert_eq!(kv.values.len(), 1000);
        assert!(kv.values.capacity() < full / 8, "capacity {} of {full}", kv.values.capacity());
        assert!(kv.values.contains_key(keys[99_500].as_slice()));
    }
}
