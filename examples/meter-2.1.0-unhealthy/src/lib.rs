//! The meter module, version 2.1.0: a broken release. It adds a per-label
//! index of totals that every handler relies on, but its `code_change` is
//! the default one, which decodes 1.0.0's state with an empty index: the
//! processes it moves answer, yet their index is wrong. Its `health`
//! callback checks the index, so a canary or health window refuses the
//! release before the damage spreads.

use std::collections::BTreeMap;

use relive_abi::prelude::*;

/// The state: 1.0.0's, plus the index (`totals[label] == count`).
#[derive(Serialize, Deserialize)]
pub struct Meter {
    label: String,
    count: u64,
    notes: u64,
    #[serde(default)]
    totals: BTreeMap<String, u64>,
}

/// Init argument.
#[derive(Deserialize)]
pub struct Start {
    label: String,
}

/// Requests.
#[derive(Deserialize)]
pub enum Request {
    /// The total, from the index.
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
            Event::Add(n) => {
                self.count += n;
                *self.totals.entry(self.label.clone()).or_default() += n;
            }
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
        let totals = BTreeMap::from([(start.label.clone(), 0)]);
        Ok(Meter { label: start.label, count: 0, notes: 0, totals })
    }

    fn handle_call(&mut self, request: Request, _ctx: &mut Ctx<'_>) -> Result<Answer, String> {
        Ok(match request {
            Request::Get => Answer::Number(self.totals.get(&self.label).copied().unwrap_or(0)),
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
        match self.totals.get(&self.label) {
            Some(total) if *total == self.count => Ok(()),
            Some(total) => Err(Error::new(format!(
                "index total {total} for {:?} disagrees with the count {}",
                self.label, self.count
            ))),
            None => Err(Error::new(format!(
                "no index entry for {:?}: code_change did not rebuild the index",
                self.label
            ))),
        }
    }
}

relive_abi::export_module!(Meter, name = "meter");
