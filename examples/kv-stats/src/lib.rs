//! The stats module, version 1.0.0: new in the kv 2.0.0 release.
//!
//! kv counts what it does (commands by name, connections, keyspace hits
//! and misses, expired keys) and casts the counts to the process registered
//! as `stats` in batches ([`Cast::Add`]); `INFO` reaches kv, which calls
//! stats with its last unsent counts and what only it knows (keys,
//! clients, its version) in [`Request::Info`], and replies with the text
//! stats builds, Redis's format: `# Section` headers and `field:value`
//! lines separated by CRLF.
//!
//! The counters live here, not in kv, so they are kept across upgrades and
//! restarts of kv; they start again from zero when stats itself restarts
//! (as Redis's do after a restart).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use relive_abi::prelude::*;

/// The state: the totals so far.
#[derive(Serialize, Deserialize, Default)]
pub struct Stats {
    /// When this process started, in milliseconds since the Unix epoch.
    started_at: u64,
    /// Every count received, summed.
    totals: Counts,
    /// Batches received (casts and INFO calls).
    batches: u64,
}

/// Counts kv sends: the increments since its last batch. The same shape is
/// declared in kv 2.0.0 (modules exchange MessagePack, not Rust types).
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
    fn add(&mut self, other: Counts) {
        for (command, n) in other.commands {
            *self.commands.entry(command).or_default() += n;
        }
        self.connections += other.connections;
        self.hits += other.hits;
        self.misses += other.misses;
        self.expired += other.expired;
    }

    fn total_commands(&self) -> u64 {
        self.commands.values().sum()
    }
}

/// What only kv knows, sent with an INFO request.
#[derive(Serialize, Deserialize, Default)]
pub struct Server {
    /// kv's module version.
    version: String,
    /// The address kv listens on.
    addr: String,
    /// Open connections.
    clients: u64,
    /// Live keys.
    keys: u64,
    /// Live keys with an expiry.
    expires: u64,
}

/// Init argument: `{}` (nothing to configure).
#[derive(Deserialize)]
pub struct Start {}

/// Casts.
#[derive(Deserialize)]
pub enum Cast {
    /// Adds a batch of counts.
    Add(Counts),
}

/// Requests of the `call` API.
#[derive(Deserialize)]
pub enum Request {
    /// Adds `counts`, then answers INFO `section` (`None`: the default
    /// sections) with the text of the reply.
    Info {
        /// kv's unsent counts.
        counts: Counts,
        /// kv's own figures.
        server: Server,
        /// The section asked for, if any.
        section: Option<String>,
    },
    /// The number of commands counted so far.
    TotalCommands,
    /// How many batches arrived.
    Batches,
}

/// Replies.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// INFO's text.
    Text(String),
    /// A number.
    Number(u64),
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Stats {
    /// The INFO text for `section`, as Redis writes it.
    fn info(&self, server: &Server, section: Option<&str>) -> String {
        let section = section.map(str::to_ascii_lowercase);
        let all = ["server", "clients", "stats", "commandstats", "keyspace"];
        let wanted: Vec<&str> = match section.as_deref() {
            None | Some("default") => vec!["server", "clients", "stats", "keyspace"],
            Some("all") | Some("everything") => all.to_vec(),
            Some(one) => match all.iter().find(|s| **s == one) {
                Some(s) => vec![*s],
                // Redis answers an unknown section with an empty text.
                None => vec![],
            },
        };
        let t = &self.totals;
        let mut text = String::new();
        for name in wanted {
            if !text.is_empty() {
                text.push_str("\r\n");
            }
            let mut lines: Vec<String> = Vec::new();
            match name {
                "server" => {
                    let uptime = now_ms().saturating_sub(self.started_at) / 1000;
                    text.push_str("# Server\r\n");
                    lines.push("redis_version:7.0.0".to_string());
                    lines.push(format!("relive_kv_version:{}", server.version));
                    lines.push(format!("relive_stats_version:{}", env!("CARGO_PKG_VERSION")));
                    let port = server.addr.rsplit(':').next().unwrap_or("");
                    lines.push(format!("tcp_port:{port}"));
                    lines.push(format!("uptime_in_seconds:{uptime}"));
                }
                "clients" => {
                    text.push_str("# Clients\r\n");
                    lines.push(format!("connected_clients:{}", server.clients));
                }
                "stats" => {
                    text.push_str("# Stats\r\n");
                    lines.push(format!("total_connections_received:{}", t.connections));
                    lines.push(format!("total_commands_processed:{}", t.total_commands()));
                    lines.push(format!("expired_keys:{}", t.expired));
                    lines.push(format!("keyspace_hits:{}", t.hits));
                    lines.push(format!("keyspace_misses:{}", t.misses));
                }
                "commandstats" => {
                    text.push_str("# Commandstats\r\n");
                    for (command, calls) in &t.commands {
                        lines.push(format!("cmdstat_{command}:calls={calls}"));
                    }
                }
                _ => {
                    text.push_str("# Keyspace\r\n");
                    if server.keys > 0 {
                        lines.push(format!("db0:keys={},expires={},avg_ttl=0", server.keys, server.expires));
                    }
                }
            }
            for line in lines {
                text.push_str(&line);
                text.push_str("\r\n");
            }
        }
        text
    }
}

impl Behaviour for Stats {
    type Init = Start;
    type Call = Request;
    type Reply = Reply;
    type Cast = Cast;
    type Info = ();

    fn init(_: Start, ctx: &mut Ctx<'_>) -> Result<Self, Error> {
        ctx.log(LogLevel::Info, &format!("stats {} started", env!("CARGO_PKG_VERSION")));
        Ok(Stats { started_at: now_ms(), ..Stats::default() })
    }

    fn handle_call(&mut self, request: Request, _ctx: &mut Ctx<'_>) -> Reply {
        match request {
            Request::Info { counts, server, section } => {
                self.totals.add(counts);
                self.batches += 1;
                Reply::Text(self.info(&server, section.as_deref()))
            }
            Request::TotalCommands => Reply::Number(self.totals.total_commands()),
            Request::Batches => Reply::Number(self.batches),
        }
    }

    fn handle_cast(&mut self, cast: Cast, _ctx: &mut Ctx<'_>) {
        match cast {
            Cast::Add(counts) => {
                self.totals.add(counts);
                self.batches += 1;
            }
        }
    }
}

relive_abi::export_module!(Stats, name = "stats");
