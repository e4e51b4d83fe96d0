//! The counter module, version 3.0.0. Its state adds `note` to version 2's
//! (`#[serde(default)]`, so version 2's bytes read as they are). It upgrades
//! from 2.x only, and `downgrade` writes 2.x's format back.
//!
//! For tests of failed migrations, `code_change` refuses a state whose label
//! is `"refuse-upgrade"` with an error, and panics on one whose label is
//! `"panic-upgrade"`; and dropping a state labelled `"slow-drop"` takes
//! 200 ms (as freeing a state that flushes a file might), so tests can see
//! what the node does while a process's state is being freed.

use relive_abi::prelude::*;

/// Version 3's state.
#[derive(Serialize, Deserialize)]
pub struct Counter {
    total: u64,
    label: String,
    adds: u64,
    /// New in 3.0.0.
    #[serde(default)]
    note: String,
}

/// Version 2's state, as its bytes read.
#[derive(Serialize, Deserialize)]
struct CounterV2 {
    total: u64,
    label: String,
    adds: u64,
}

/// Init argument.
#[derive(Deserialize)]
pub struct Start {
    #[serde(default)]
    label: String,
    #[serde(default)]
    count: u64,
    #[serde(default)]
    note: String,
    #[serde(default)]
    fail: bool,
    #[serde(default)]
    panic: bool,
}

/// Requests: version 2's, plus `Note`.
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
    /// The note.
    Note,
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
    State { total: u64, label: String, adds: u64, note: String },
}

/// Casts.
#[derive(Deserialize)]
pub enum Cast {
    /// Adds.
    Add(u64),
    /// Stops the process with this reason.
    Stop(String),
}

/// `extra` of an upgrade: the note to give upgraded counters.
#[derive(Deserialize)]
struct UpgradeExtra {
    note: String,
}

impl Drop for Counter {
    fn drop(&mut self) {
        if self.label == "slow-drop" {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
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
        Ok(Counter { total: start.count, label: start.label, adds: 0, note: start.note })
    }

    fn handle_call(&mut self, request: Request, _ctx: &mut Ctx<'_>) -> Reply {
        match request {
            Request::Get => Reply::Number(self.total),
            Request::Add(n) => Reply::Number(self.add(n)),
            Request::Version => Reply::Text(env!("CARGO_PKG_VERSION").to_string()),
            Request::State => Reply::State {
                total: self.total,
                label: self.label.clone(),
                adds: self.adds,
                note: self.note.clone(),
            },
            Request::Crash => panic!("counter was told to crash"),
            Request::Adds => Reply::Number(self.adds),
            Request::Note => Reply::Text(self.note.clone()),
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
        match from.major {
            // Our own format (a restart of 3.x).
            3 => old.decode(),
            2 => {
                let v2: CounterV2 = old.decode()?;
                match v2.label.as_str() {
                    "refuse-upgrade" => {
                        return Err(Error::new(format!(
                            "counter 3.0.0 refuses to upgrade a counter labelled {:?}",
                            v2.label
                        )));
                    }
                    "panic-upgrade" => panic!("counter 3.0.0 code_change was told to panic"),
                    _ => {}
                }
                let note = extra.decode::<UpgradeExtra>()?.map(|e| e.note).unwrap_or_default();
                Ok(Counter { total: v2.total, label: v2.label, adds: v2.adds, note })
            }
            _ => Err(Error::new(format!("counter 3.0.0 upgrades from 2.x only, not from {from}"))),
        }
    }

    fn downgrade(&self, to: &Version) -> Result<StateBytes, Error> {
        match to.major {
            3 => StateBytes::encode(self),
            2 => StateBytes::encode(&CounterV2 {
                total: self.total,
                label: self.label.clone(),
                adds: self.adds,
            }),
            _ => Err(Error::new(format!("counter 3.0.0 downgrades to 2.x only, not to {to}"))),
        }
    }
}

relive_abi::export_module!(Counter, name = "counter");
