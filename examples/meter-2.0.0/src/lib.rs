//! The meter module, version 2.0.0: a sound upgrade of 1.0.0 that also
//! keeps the last note. Its `health` checks what it adds: a meter that
//! counted notes has kept one since, or has none yet (freshly moved).

use relive_abi::prelude::*;

/// The state: 1.0.0's, plus the last note (empty after the move).
#[derive(Serialize, Deserialize)]
pub struct Meter {
    label: String,
    count: u64,
    notes: u64,
    #[serde(default)]
    last_note: Option<String>,
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
    /// The last note, if one was taken on this version.
    LastNote,
}

/// Replies.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Answer {
    /// A number.
    Number(u64),
    /// A text.
    Text(String),
    /// Nothing.
    Nothing(Option<String>),
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
            Event::Note(note) => {
                self.notes += 1;
                self.last_note = Some(note);
            }
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
        Ok(Meter { label: start.label, count: 0, notes: 0, last_note: None })
    }

    fn handle_call(&mut self, request: Request, _ctx: &mut Ctx<'_>) -> Result<Answer, String> {
        Ok(match request {
            Request::Get => Answer::Number(self.count),
            Request::Version => Answer::Text(env!("CARGO_PKG_VERSION").into()),
            Request::Notes => Answer::Number(self.notes),
            Request::LastNote => Answer::Nothing(self.last_note.clone()),
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
