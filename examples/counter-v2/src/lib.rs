//! The counter module, version 2.0.0. Its state renames `count` to `total`
//! and adds `adds` (how many additions it has seen), so `code_change` does
//! real work, and `downgrade` writes version 1's format back.
//! Version 1's messages are all still accepted.

use relive_abi::prelude::*;

/// Version 2's state.
#[derive(Serialize, Deserialize)]
pub struct Counter {
    total: u64,
    label: String,
    adds: u64,
}

/// Version 1's state, as its bytes read.
#[derive(Serialize, Deserialize)]
struct CounterV1 {
    count: u64,
    label: String,
}

/// Init argument.
#[derive(Deserialize)]
pub struct Start {
    #[serde(default)]
    label: String,
    #[serde(default)]
    count: u64,
    #[serde(default)]
    fail: bool,
    #[serde(default)]
    panic: bool,
}

/// Requests: version 1's, plus `Adds`.
#[derive(Deserialize)]
pub enum Request {
    /// The total.
    Get,
    /// Adds and returns the new total.
    Add(u64),
    /// The version of the code answering.
    Version,
    /// The whole state, as this version sees it.
    State,
    /// Panics (for tests).
    Crash,
    /// How many additions this counter has seen since it ran version 2.
    Adds,
}

/// Replies.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// A number.
    Number(u64),
    /// A text.
    Text(String),
    /// The state.
    State { total: u64, label: String, adds: u64 },
}

/// Casts.
#[derive(Deserialize)]
pub enum Cast {
    /// Adds.
    Add(u64),
    /// Stops the process with this reason.
    Stop(String),
}

/// `extra` of an upgrade: a label to give counters that have none.
#[derive(Deserialize)]
struct UpgradeExtra {
    default_label: String,
}

impl Counter {
    fn add(&mut self, n: u64) -> u64 {
        self.total += n;
        self.adds += 1;
        self.total
    }
}

impl Behaviour for Counter {
    type Init = Start;
    type Call = Request;
    type Reply = Reply;
    type Cast = Cast;
    type Info = u64;

    fn init(start: Start, _ctx: &mut Ctx<'_>) -> Result<Self, Error> {
        if start.panic {
            panic!("counter init was told to panic");
        }
        if start.fail {
            return Err(Error::new("counter init was told to fail"));
        }
        Ok(Counter { total: start.count, label: start.label, adds: 0 })
    }

    fn handle_call(&mut self, request: Request, _ctx: &mut Ctx<'_>) -> Reply {
        match request {
            Request::Get => Reply::Number(self.total),
            Request::Add(n) => Reply::Number(self.add(n)),
            Request::Version => Reply::Text(env!("CARGO_PKG_VERSION").to_string()),
            Request::State => Reply::State { total: self.total, label: self.label.clone(), adds: self.adds },
            Request::Crash => panic!("counter was told to crash"),
            Request::Adds => Reply::Number(self.adds),
        }
    }

    fn handle_cast(&mut self, cast: Cast, ctx: &mut Ctx<'_>) {
        match cast {
            Cast::Add(n) => {
                self.add(n);
            }
            Cast::Stop(reason) => ctx.stop(&reason),
        }
    }

    fn handle_info(&mut self, info: Info<u64>, _ctx: &mut Ctx<'_>) {
        if let Info::Message(n) = info {
            self.add(n);
        }
    }

    fn code_change(from: &Version, old: StateBytes, extra: Extra) -> Result<Self, Error> {
        if from.major != 1 {
            // Our own format (a restart of 2.x, or a downgrade from 3.x that
            // wrote 2.x's format).
            return old.decode();
        }
        let v1: CounterV1 = old.decode()?;
        let label = match (v1.label.is_empty(), extra.decode::<UpgradeExtra>()?) {
            (true, Some(extra)) => extra.default_label,
            _ => v1.label,
        };
        Ok(Counter { total: v1.count, label, adds: 0 })
    }

    fn downgrade(&self, to: &Version) -> Result<StateBytes, Error> {
        if to.major == 1 {
            StateBytes::encode(&CounterV1 { count: self.total, label: self.label.clone() })
        } else {
            StateBytes::encode(self)
        }
    }
}

relive_abi::export_module!(Counter, name = "counter");
