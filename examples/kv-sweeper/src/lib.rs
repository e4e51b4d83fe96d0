//! The sweeper module, version 1.0.0: part of the kv 1.1 releases.
//!
//! kv 1.1.0 expires keys lazily (a key past its deadline goes when a
//! command touches it), so a key nobody reads again would stay in memory.
//! The sweeper fixes that from the outside: every `every_ms` milliseconds
//! it casts `Sweep` to the process registered as `target` (kv), which then
//! drops every expired key. kv 2.0.0 expires keys on its own timer, so its
//! release removes this module: the upgrade stops the process and deletes
//! the module, and a rollback to 1.1 starts it again.

use std::time::Duration;

use relive_abi::prelude::*;

/// The state.
#[derive(Serialize, Deserialize)]
pub struct Sweeper {
    /// The registered name sweeps are cast to.
    target: String,
    /// The period, in milliseconds.
    every_ms: u64,
    /// Sweeps cast so far.
    sweeps: u64,
    /// Casts that found no process registered as `target`.
    missed: u64,
}

/// Init argument: `{"target": "kv", "every_ms": 1000}` (both optional).
#[derive(Deserialize)]
pub struct Start {
    #[serde(default = "default_target")]
    target: String,
    #[serde(default = "default_every_ms")]
    every_ms: u64,
}

fn default_target() -> String {
    "kv".to_string()
}

fn default_every_ms() -> u64 {
    1000
}

/// What kv 1.1's `handle_cast` takes (its `Cast` type).
#[derive(Serialize)]
enum KvCast {
    Sweep,
}

/// The timer's message.
#[derive(Serialize, Deserialize)]
pub struct Tick;

/// Requests of the `call` API.
#[derive(Deserialize)]
pub enum Request {
    /// Sweeps cast so far.
    Sweeps,
    /// Casts that found no target.
    Missed,
    /// The target's name.
    Target,
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

impl Sweeper {
    fn arm(&mut self, ctx: &mut Ctx<'_>) {
        let me = ctx.pid();
        if let Err(e) = ctx.send_after(me, &Tick, Duration::from_millis(self.every_ms)) {
            ctx.log(LogLevel::Error, &format!("sweeper: could not set its timer: {}", e.message()));
        }
    }
}

impl Behaviour for Sweeper {
    type Init = Start;
    type Call = Request;
    type Reply = Reply;
    type Cast = ();
    type Info = Tick;

    fn init(start: Start, ctx: &mut Ctx<'_>) -> Result<Self, Error> {
        if start.every_ms == 0 {
            return Err(Error::new("sweeper: every_ms must be at least 1"));
        }
        let mut sweeper = Sweeper { target: start.target, every_ms: start.every_ms, sweeps: 0, missed: 0 };
        sweeper.arm(ctx);
        Ok(sweeper)
    }

    fn handle_call(&mut self, request: Request, _ctx: &mut Ctx<'_>) -> Reply {
        match request {
            Request::Sweeps => Reply::Number(self.sweeps),
            Request::Missed => Reply::Number(self.missed),
            Request::Target => Reply::Text(self.target.clone()),
        }
    }

    fn handle_info(&mut self, info: Info<Tick>, ctx: &mut Ctx<'_>) {
        let Info::Message(Tick) = info else { return };
        // The target may be between a restart and its registration: a
        // missed sweep is only late, the next one catches up.
        match ctx.cast_named(&self.target, &KvCast::Sweep) {
            Ok(()) => self.sweeps += 1,
            Err(_) => self.missed += 1,
        }
        self.arm(ctx);
    }
}

relive_abi::export_module!(Sweeper, name = "sweeper");
