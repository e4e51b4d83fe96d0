//! The chat's acceptor (module `chat_acceptor`, the same in chat 1.0.0 and
//! 1.1.0, so an upgrade leaves it alone).
//!
//! It listens, and for each accepted connection starts a session process
//! under the `sessions` simple_one_for_one supervisor (with the
//! connection's port and peer as start arguments), hands the connection to
//! it (`port_set_owner`: from then on the connection's bytes go to the
//! session, and it closes when the session exits), and tells it
//! [`ToSession::Attached`] so it greets the client. It monitors every
//! session it started, so it always knows how many connections are open.
//!
//! A client that writes before the greeting may have bytes reach the
//! acceptor before the hand-over: they are forwarded to the session as
//! [`ToSession::Stray`] (in order among themselves, but a byte sent after
//! the hand-over may overtake them: clients wait for the greeting).
//!
//! Calls (`relive call acceptor ...`): `"Connections"` (how many sessions
//! run), `"Sessions"` (their pids and peers), `"Addr"`, `"Version"`,
//! `{"Kick": "nick"}` (kills that nick's session with reason `kill`, as
//! `exit(Pid, kill)` would: the connection closes and every room the nick
//! was in sees the member's monitor fire; `true` if the nick was found).

use std::collections::BTreeMap;

use chat_wire::{SESSIONS, SessionArgs, ToSession};
use relive_abi::prelude::*;

/// The state.
#[derive(Serialize, Deserialize)]
pub struct Acceptor {
    /// The listener.
    listener: PortId,
    /// The address it is bound to.
    addr: String,
    /// The sessions it started and still run, by pid.
    sessions: BTreeMap<Pid, Session>,
    /// Connections accepted so far.
    accepted: u64,
}

/// A session the acceptor started.
#[derive(Serialize, Deserialize)]
struct Session {
    /// Its connection.
    port: PortId,
    /// The client's address.
    peer: String,
    /// The acceptor's monitor of it.
    monitor: MonitorRef,
}

/// Init argument.
#[derive(Deserialize)]
pub struct Start {
    /// Where to listen (`host:port`; port 0 picks a free one).
    listen: String,
}

/// Requests of the `call` API.
#[derive(Deserialize)]
pub enum Request {
    /// How many sessions run.
    Connections,
    /// Each session's pid and peer.
    Sessions,
    /// The address the listener is bound to.
    Addr,
    /// The version of the code answering.
    Version,
    /// Kills the session of this nick.
    Kick(String),
}

/// Replies.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// A number.
    Number(u64),
    /// A text.
    Text(String),
    /// Yes or no.
    Flag(bool),
    /// Sessions.
    Sessions(Vec<SessionView>),
}

/// A session as `"Sessions"` shows it.
#[derive(Serialize)]
pub struct SessionView {
    pid: String,
    peer: String,
}

impl Acceptor {
    /// A connection came: start its session and hand it over.
    fn accepted(&mut self, port: PortId, peer: String, ctx: &mut Ctx<'_>) {
        self.accepted += 1;
        let session = chat_wire::start_child(ctx, SESSIONS, &SessionArgs { port, peer: peer.clone() })
            .and_then(|pid| ctx.port_set_owner(port, pid).map(|()| pid));
        match session {
            Ok(pid) => {
                let monitor = ctx.monitor(pid);
                self.sessions.insert(pid, Session { port, peer, monitor });
                // The session greets the client once this arrives: it owns
                // the connection by then.
                let _ = ctx.send(pid, &ToSession::Attached);
            }
            Err(error) => {
                ctx.log(LogLevel::Error, &format!("chat: no session for {peer}: {error}"));
                let _ =
                    ctx.port_send(port, format!("ERR the server cannot take you now: {error}\n").as_bytes());
                let _ = ctx.port_close(port);
            }
        }
    }

    /// An event of a connection already handed over, delivered before the
    /// hand-over: it belongs to the session.
    fn stray(&mut self, port: PortId, event: PortEvent, ctx: &mut Ctx<'_>) {
        if let Some((&pid, _)) = self.sessions.iter().find(|(_, s)| s.port == port) {
            let _ = ctx.send(pid, &ToSession::Stray(event));
        }
    }
}

impl Behaviour for Acceptor {
    type Init = Start;
    type Call = Request;
    type Reply = Reply;
    type Cast = ();
    type Info = ();

    fn init(start: Start, ctx: &mut Ctx<'_>) -> Result<Self, Error> {
        let (listener, addr) = ctx.listen_at(&start.listen)?;
        ctx.log(LogLevel::Info, &format!("chat acceptor {} listening on {addr}", env!("CARGO_PKG_VERSION")));
        Ok(Acceptor { listener, addr, sessions: BTreeMap::new(), accepted: 0 })
    }

    fn handle_call(&mut self, request: Request, ctx: &mut Ctx<'_>) -> Reply {
        match request {
            Request::Connections => Reply::Number(self.sessions.len() as u64),
            Request::Sessions => Reply::Sessions(
                self.sessions
                    .iter()
                    .map(|(pid, s)| SessionView { pid: pid.to_string(), peer: s.peer.clone() })
                    .collect(),
            ),
            Request::Addr => Reply::Text(self.addr.clone()),
            Request::Version => Reply::Text(env!("CARGO_PKG_VERSION").to_string()),
            Request::Kick(nick) => match ctx.whereis(&chat_wire::nick_name(&nick)) {
                Some(pid) => {
                    ctx.exit(pid, "kill");
                    Reply::Flag(true)
                }
                None => Reply::Flag(false),
            },
        }
    }

    fn handle_info(&mut self, info: Info<()>, ctx: &mut Ctx<'_>) {
        match info {
            Info::Port(PortEvent::Accepted { port, peer, .. }) => self.accepted(port, peer, ctx),
            Info::Port(event @ PortEvent::Data { port, .. }) => self.stray(port, event, ctx),
            Info::Port(event @ PortEvent::Closed { port, .. }) => self.stray(port, event, ctx),
            Info::Down { pid, .. } => {
                self.sessions.remove(&pid);
            }
            Info::Message(()) | Info::Exit { .. } => {}
        }
    }
}

relive_abi::export_module!(Acceptor, name = "chat_acceptor");
