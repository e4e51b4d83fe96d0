//! The gateway module, version 1.0.0: counts the requests it forwards.
//! The example `relive cluster deploy` rolls out node by node.

use relive_abi::prelude::*;

/// The state.
#[derive(Serialize, Deserialize)]
pub struct Gateway {
    forwarded: u64,
}

/// Requests.
#[derive(Deserialize)]
pub enum Request {
    /// Counts one forwarded request; answers the count.
    Forward,
    /// The version of the code answering.
    Version,
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

impl Behaviour for Gateway {
    type Init = ();
    type Call = Request;
    type Reply = Reply;
    type Cast = ();
    type Info = ();

    fn init(_: (), _ctx: &mut Ctx<'_>) -> Result<Self, Error> {
        Ok(Gateway { forwarded: 0 })
    }

    fn handle_call(&mut self, request: Request, _ctx: &mut Ctx<'_>) -> Reply {
        match request {
            Request::Forward => {
                self.forwarded += 1;
                Reply::Number(self.forwarded)
            }
            Request::Version => Reply::Text(env!("CARGO_PKG_VERSION").into()),
        }
    }
}

relive_abi::export_module!(Gateway, name = "gateway");
