//! The ticker module, version 1.0.0: load for releases with many processes
//! (the swarm and poison example releases).
//!
//! Every `every_ms` milliseconds it casts `Add(1)` to the next `per_tick`
//! targets, the processes registered as `{prefix}-{i}`, going round-robin
//! over `i` in `0..count`, until it has delivered `rounds * count` casts:
//! then it stops its timer (and stays alive, to be asked how it went). In
//! the end each target has been sent exactly `rounds` casts, so a test can
//! check that no add was lost across an upgrade: every counter reads
//! `rounds`.
//!
//! A cast that finds no process under the name (a target between a crash
//! and its restart, or not registered again yet) is not skipped: it is
//! counted as missed and tried again on the next tick, before new ones.
//!
//! Calls (JSON, externally tagged unit variants): `"Sent"` → casts
//! delivered, `"Missed"` → failed attempts, `"Done"` → `"done"` or
//! `"running"`.

use std::time::Duration;

use relive_abi::prelude::*;

/// The state.
#[derive(Serialize, Deserialize)]
pub struct Ticker {
    /// Targets are `{prefix}-{i}`.
    prefix: String,
    /// How many targets: `i` in `0..count`.
    count: u64,
    /// How many casts each target gets.
    rounds: u64,
    /// Cast attempts per tick (retries included).
    per_tick: u64,
    /// The period, in milliseconds.
    every_ms: u64,
    /// Casts delivered so far; the next new cast goes to `next % count`.
    sent: u64,
    /// The next new cast's number, in `0..rounds * count`.
    next: u64,
    /// Failed attempts so far.
    missed: u64,
    /// Targets (by `i`) owed a cast whose last attempt missed, oldest first.
    retry: Vec<u64>,
}

/// Init argument: `{"prefix": "counter", "count": 10000, "rounds": 20,
/// "per_tick": 500, "every_ms": 1}` (all optional, these are the defaults).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Start {
    #[serde(default = "default_prefix")]
    prefix: String,
    #[serde(default = "default_count")]
    count: u64,
    #[serde(default = "default_rounds")]
    rounds: u64,
    #[serde(default = "default_per_tick")]
    per_tick: u64,
    #[serde(default = "default_every_ms")]
    every_ms: u64,
}

fn default_prefix() -> String {
    "counter".to_string()
}

fn default_count() -> u64 {
    10_000
}

fn default_rounds() -> u64 {
    20
}

fn default_per_tick() -> u64 {
    500
}

fn default_every_ms() -> u64 {
    1
}

/// What the counter's `handle_cast` takes: its `Cast::Add`, the first
/// variant, so that it reads the same by name or by index.
#[derive(Serialize)]
enum CounterCast {
    Add(u64),
}

/// The timer's message.
#[derive(Serialize, Deserialize)]
pub struct Tick;

/// Requests of the `call` API.
#[derive(Deserialize)]
pub enum Request {
    /// Casts delivered so far.
    Sent,
    /// Failed attempts so far (each retried).
    Missed,
    /// `"done"` once every cast is delivered, else `"running"`.
    Done,
}

/// Replies.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// A number.
    Number(u64),
    /// A text.
    Text(String),
}

impl Ticker {
    fn total(&self) -> u64 {
        self.rounds.saturating_mul(self.count)
    }

    fn done(&self) -> bool {
        self.next >= self.total() && self.retry.is_empty()
    }

    fn arm(&mut self, ctx: &mut Ctx<'_>) {
        let me = ctx.pid();
        if let Err(e) = ctx.send_after(me, &Tick, Duration::from_millis(self.every_ms)) {
            ctx.log(LogLevel::Error, &format!("ticker: could not set its timer: {}", e.message()));
        }
    }

    /// Casts to target `i`; false (and counted) if no process has its name.
    fn cast(&mut self, i: u64, ctx: &mut Ctx<'_>) -> bool {
        let name = format!("{}-{i}", self.prefix);
        match ctx.cast_named(&name, &CounterCast::Add(1)) {
            Ok(()) => {
                self.sent += 1;
                true
            }
            Err(_) => {
                self.missed += 1;
                false
            }
        }
    }

    /// One tick's worth: the retries first, then new casts, `per_tick`
    /// attempts in all.
    fn tick(&mut self, ctx: &mut Ctx<'_>) {
        let mut budget = self.per_tick;
        let retries = std::mem::take(&mut self.retry);
        let mut retried = 0;
        for &i in &retries {
            if budget == 0 {
                break;
            }
            budget -= 1;
            retried += 1;
            if !self.cast(i, ctx) {
                self.retry.push(i);
            }
        }
        // Those not tried this tick stay owed, after the ones that missed
        // again (order does not matter to a sum).
        self.retry.extend_from_slice(&retries[retried..]);
        while budget > 0 && self.next < self.total() {
            budget -= 1;
            let i = self.next % self.count;
            self.next += 1;
            if !self.cast(i, ctx) {
                self.retry.push(i);
            }
        }
    }
}

impl Behaviour for Ticker {
    type Init = Start;
    type Call = Request;
    type Reply = Reply;
    type Cast = ();
    type Info = Tick;

    fn init(start: Start, ctx: &mut Ctx<'_>) -> Result<Self, Error> {
        for (field, value) in
            [("count", start.count), ("per_tick", start.per_tick), ("every_ms", start.every_ms)]
        {
            if value == 0 {
                return Err(Error::new(format!(
                    "ticker: {field} is 0; give it at least 1 (args {{ prefix, count, rounds, per_tick, every_ms }})"
                )));
            }
        }
        if start.prefix.is_empty() {
            return Err(Error::new(
                "ticker: prefix is empty; give the name the targets share, such as \"counter\"",
            ));
        }
        let mut ticker = Ticker {
            prefix: start.prefix,
            count: start.count,
            rounds: start.rounds,
            per_tick: start.per_tick,
            every_ms: start.every_ms,
            sent: 0,
            next: 0,
            missed: 0,
            retry: Vec::new(),
        };
        if !ticker.done() {
            ticker.arm(ctx);
        }
        Ok(ticker)
    }

    fn handle_call(&mut self, request: Request, _ctx: &mut Ctx<'_>) -> Reply {
        match request {
            Request::Sent => Reply::Number(self.sent),
            Request::Missed => Reply::Number(self.missed),
            Request::Done => Reply::Text(if self.done() { "done" } else { "running" }.to_string()),
        }
    }

    fn handle_info(&mut self, info: Info<Tick>, ctx: &mut Ctx<'_>) {
        let Info::Message(Tick) = info else { return };
        self.tick(ctx);
        if !self.done() {
            self.arm(ctx);
        }
    }
}

relive_abi::export_module!(Ticker, name = "ticker");
