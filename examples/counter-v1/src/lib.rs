//! The counter module, version 1.0.0: a named running total.

use relive_abi::prelude::*;

/// Version 1's state.
#[derive(Serialize, Deserialize)]
pub struct Counter {
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
    /// Makes init fail (for tests of init errors).
    #[serde(default)]
    fail: bool,
    /// Makes init panic (for tests of contained panics).
    #[serde(default)]
    panic: bool,
}

/// Requests.
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
    State { count: u64, label: String },
}

/// Casts.
#[derive(Deserialize)]
pub enum Cast {
    /// Adds.
    Add(u64),
    /// Stops the process with this reason.
    Stop(String),
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
        Ok(Counter { count: start.count, label: start.label })
    }

    fn handle_call(&mut self, request: Request, _ctx: &mut Ctx<'_>) -> Reply {
        match request {
            Request::Get => Reply::Number(self.count),
            Request::Add(n) => {
                self.count += n;
                Reply::Number(self.count)
            }
            Request::Version => Reply::Text(env!("CARGO_PKG_VERSION").to_string()),
            Request::State => Reply::State { count: self.count, label: self.label.clone() },
            Request::Crash => panic!("counter was told to crash"),
        }
    }

    fn handle_cast(&mut self, cast: Cast, ctx: &mut Ctx<'_>) {
        match cast {
            Cast::Add(n) => self.count += n,
            Cast::Stop(reason) => ctx.stop(&reason),
        }
    }

    fn handle_info(&mut self, info: Info<u64>, _ctx: &mut Ctx<'_>) {
        if let Info::Message(n) = info {
            self.count += n;
        }
    }
}

relive_abi::export_module!(Counter, name = "counter");
