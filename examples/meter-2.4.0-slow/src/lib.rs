//! The meter module, version 2.4.0: a slow release. Each addition and
//! note now waits on a round trip to a backend (simulated: 20 ms) before
//! it is applied. Its answers are right, it never crashes and answers no
//! error, yet its handlers take about a thousand times 1.0.0's: a canary
//! or health window with `--max-latency-ratio` refuses the release.

use std::time::Duration;

use relive_abi::prelude::*;

/// What the backend round trip costs.
const BACKEND: Duration = Duration::from_millis(20);

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
    /// Takes a note (counted).
    Note(String),
}

impl Meter {
    fn apply(&mut self, event: Event) {
        // The backend is told first (simulated).
        std::thread::sleep(BACKEND);
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

    fn handle_call(&mut self, request: Request, _ctx: &mut Ctx<'_>) -> Result<Answer, String> {
        Ok(match request {
            Request::Get => Answer::Number(self.count),
            Request::Version => Answer::Text(env!("CARGO_PKG_VERSION").into()),
            Request::Notes => Answer::Number(self.notes),
        })
    }

    fn handle_cast(&mut self, event: Event, _ctx: &mut Ctx<'_>) {
        self.apply(event);
    }

    fn handle_info(&mut self, info: Info<Event>, _ctx: &mut Ctx<'_>) {
        if let Info::Message(event) = info {
            self.apply(event);
        }
    }

    fn health(&self, _ctx: &mut Ctx<'_>) -> Result<(), Error> {
        if self.label.is_empty() {
            return Err(Error::new("the meter has no label"));
        }
        Ok(())
    }
}

relive_abi::export_module!(Meter, name = "meter");
