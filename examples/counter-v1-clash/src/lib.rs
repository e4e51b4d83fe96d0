//! A bad module for tests: it calls itself `counter` 1.0.0, like
//! counter-v1, but its state has other fields. Loading it next to (or after)
//! the real counter 1.0.0 must fail with `CodeError::LayoutChanged`.

use relive_abi::prelude::*;

/// Not version 1's state: other fields, other types.
#[derive(Serialize, Deserialize)]
pub struct Counter {
    value: i64,
    history: Vec<i64>,
}

impl Behaviour for Counter {
    type Init = i64;
    type Call = ();
    type Reply = i64;
    type Cast = i64;
    type Info = ();

    fn init(start: i64, _ctx: &mut Ctx<'_>) -> Result<Self, Error> {
        Ok(Counter { value: start, history: Vec::new() })
    }

    fn handle_call(&mut self, _request: (), _ctx: &mut Ctx<'_>) -> i64 {
        self.value
    }

    fn handle_cast(&mut self, n: i64, _ctx: &mut Ctx<'_>) {
        self.history.push(n);
        self.value += n;
    }
}

relive_abi::export_module!(Counter, name = "counter");
