//! The gateway module, version 2.0.0: forwards to an upstream service
//! whose address each host gives in `GATEWAY_UPSTREAM` (host:port). Its
//! `health` callback checks that the upstream accepts a connection, so a
//! host without one fails the health window of a deploy and that node rolls
//! back to 1.0.0 (the example `relive cluster deploy` rolls out).

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use relive_abi::prelude::*;

/// The state: 1.0.0's, unchanged.
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

const UPSTREAM_ENV: &str = "GATEWAY_UPSTREAM";

fn upstream() -> Result<SocketAddr, Error> {
    let text = std::env::var(UPSTREAM_ENV)
        .map_err(|_| Error::new(format!("{UPSTREAM_ENV} is not set on this host: set it to the upstream's host:port")))?;
    text.parse().map_err(|_| Error::new(format!("{UPSTREAM_ENV}={text:?} is not host:port")))
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

    fn health(&self, _ctx: &mut Ctx<'_>) -> Result<(), Error> {
        let address = upstream()?;
        TcpStream::connect_timeout(&address, Duration::from_millis(500))
            .map(drop)
            .map_err(|error| Error::new(format!("upstream {address} ({UPSTREAM_ENV}) refuses connections: {error}")))
    }
}

relive_abi::export_module!(Gateway, name = "gateway");
