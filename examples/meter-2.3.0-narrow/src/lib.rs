//! The meter module, version 2.3.0: a broken release. It drops the `Note`
//! event (notes moved elsewhere), but the senders of the running system
//! still send notes: the new code cannot decode them, and each is dropped
//! unhandled. The node counts them as lost, and a canary or health window
//! refuses the release.

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
    /// The total.
    Get,
    /// The version of the code answering.
    Version,
    /// Notes taken (by 1.0.0).
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

/// Casts and plain messages: `Note` is gone.
#[derive(Deserialize)]
pub enum Event {
    /// Adds to the total.
    Add(u64),
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

    fn handle_call(&mut self, request: Request, _ctx: &mut Ctx<'_>) -> Result<Answer, String> {
        Ok(match request {
            Request::Get => Answer::Number(self.count),
            Request::Version => Answer::Text(env!("CARGO_PKG_VERSION").into()),
            Request::Notes => Answer::Number(self.notes),
        })
    }

    fn handle_cast(&mut self, Event::Add(n): Event, _ctx: &mut Ctx<'_>) {
        self.count += n;
    }

    fn handle_info(&mut self, info: Info<Event>, _ctx: &mut Ctx<'_>) {
        if let Info::Message(Event::Add(n)) = info {
            self.count += n;
        }
    }
}

relive_abi::export_module!(Meter, name = "meter");
