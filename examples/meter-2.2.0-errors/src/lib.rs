//! The meter module, version 2.2.0: a broken release. `Get` now asks a
//! quota process (registered as `quota`) before answering, but the
//! release does not start one: every `Get` answers an error. The node
//! counts error replies (`Err` results) per version, so a health window
//! with `--max-error-rate` refuses the release.

use std::time::Duration;

use relive_abi::prelude::*;

/// The state, as 1.0.0's.
#[derive(Serialize, Deserialize)]
pub struct Meter {
    label: String,
    count: u64,
    notes: u64,
}

/// Init argument.
#[derive(Deserialize)]
pub struct Start {
    label: String,
}

/// Requests.
#[derive(Deserialize)]
pub enum Request {
    /// The total, if the quota process allows.
    Get,
    /// The version of the code answering.
    Version,
    /// Notes taken so far.
    Notes,
}

/// Replies.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Answer {
    /// A number.
    Number(u64),
    /// A text.
    Text(String),
}

/// Casts and plain messages.
#[derive(Deserialize)]
pub enum Event {
    /// Adds to the total.
    Add(u64),
    /// Takes a note.
    Note(String),
}

impl Meter {
    fn apply(&mut self, event: Event) {
        match event {
            Event::Add(n) => self.count += n,
            Event::Note(_) => self.notes += 1,
        }
    }
}

impl Behaviour for Meter {
    type Init = Start;
    type Call = Request;
    type Reply = Result<Answer, String>;
    type Cast = Event;
    type Info = Event;

    fn init(start: Start, _ctx: &mut Ctx<'_>) -> Result<Self, Error> {
        Ok(Meter { label: start.label, count: 0, notes: 0 })
    }

    fn handle_call(&mut self, request: Request, ctx: &mut Ctx<'_>) -> Result<Answer, String> {
        match request {
            Request::Get => {
                let quota =
                    ctx.whereis("quota").ok_or("no quota process is registered: cannot answer Get")?;
                let allowed: bool =
                    ctx.call(quota, &self.label, Duration::from_secs(1)).map_err(|e| e.to_string())?;
                if allowed { Ok(Answer::Number(self.count)) } else { Err("over quota".into()) }
            }
            Request::Version => Ok(Answer::Text(env!("CARGO_PKG_VERSION").into())),
            Request::Notes => Ok(Answer::Number(self.notes)),
        }
    }

    fn handle_cast(&mut self, event: Event, _ctx: &mut Ctx<'_>) {
        self.apply(event);
    }

    fn handle_info(&mut self, info: Info<Event>, _ctx: &mut Ctx<'_>) {
        if let Info::Message(event) = info {
            self.apply(event);
        }
    }
}

relive_abi::export_module!(Meter, name = "meter");
