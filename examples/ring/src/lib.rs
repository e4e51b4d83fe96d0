//! The ring module: one process of the token ring that `relive bench ring
//! --module` measures (the module-process twin of the native ring).
//!
//! Each process knows the next one (`Token::Next`) and passes the token on
//! (`Token::Hop(n)` becomes `Hop(n - 1)` at the next process). The process
//! that receives `Hop(0)` reports to the driver: a cast of its own pid to
//! the process registered as [`DRIVER`].

use relive_abi::prelude::*;

/// The registered name the last hop reports to.
pub const DRIVER: &str = "ring_driver";

/// A process of the ring.
#[derive(Serialize, Deserialize)]
pub struct Ring {
    next: Option<Pid>,
}

/// Init argument (MessagePack map; `{}` for a process whose next is set
/// later by `Token::Next`).
#[derive(Deserialize)]
pub struct Start {
    #[serde(default)]
    next: Option<Pid>,
}

/// What travels round the ring (as plain messages or casts).
#[derive(Serialize, Deserialize)]
pub enum Token {
    /// Sets the next process.
    Next(Pid),
    /// The token, with the hops still to go; 0 reports to [`DRIVER`].
    Hop(u64),
}

/// Requests: `"Next"`, the next process (or nil).
#[derive(Deserialize)]
pub enum Request {
    /// The next process.
    Next,
}

impl Ring {
    fn token(&mut self, token: Token, ctx: &mut Ctx<'_>) {
        match token {
            Token::Next(next) => self.next = Some(next),
            Token::Hop(0) => {
                let me = ctx.pid();
                if let Err(error) = ctx.cast_named(DRIVER, &me) {
                    ctx.log(LogLevel::Warn, &format!("ring: cannot report the last hop: {error}"));
                }
            }
            Token::Hop(hops) => match self.next {
                Some(next) => {
                    if let Err(error) = ctx.send(next, &Token::Hop(hops - 1)) {
                        ctx.log(LogLevel::Warn, &format!("ring: the token was lost: {error}"));
                    }
                }
                None => ctx.log(LogLevel::Warn, "ring: the token was lost: no next process"),
            },
        }
    }
}

impl Behaviour for Ring {
    type Init = Start;
    type Call = Request;
    type Reply = Option<Pid>;
    type Cast = Token;
    type Info = Token;

    fn init(start: Start, _ctx: &mut Ctx<'_>) -> Result<Self, Error> {
        Ok(Ring { next: start.next })
    }

    fn handle_call(&mut self, request: Request, _ctx: &mut Ctx<'_>) -> Option<Pid> {
        match request {
            Request::Next => self.next,
        }
    }

    fn handle_cast(&mut self, token: Token, ctx: &mut Ctx<'_>) {
        self.token(token, ctx);
    }

    fn handle_info(&mut self, info: Info<Token>, ctx: &mut Ctx<'_>) {
        if let Info::Message(token) = info {
            self.token(token, ctx);
        }
    }
}

relive_abi::export_module!(Ring, name = "ring");
