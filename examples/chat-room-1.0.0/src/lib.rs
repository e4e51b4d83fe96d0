//! A chat room (module `chat_room`), version 1.0.0: one process per room,
//! a child of the `rooms` simple_one_for_one supervisor, started by the
//! first session that JOINs it and registered as `room-<name>`.
//!
//! Its members are a list of (session pid, nick, monitor). The room
//! monitors every member: when a member's session ends (its client
//! disconnected, or it was killed) the monitor's `Down` removes it and the
//! others are told. Sessions monitor the room in turn: if it crashes, its
//! supervisor restarts it (empty, same name, as `restart = "permanent"`
//! says) and the sessions rejoin it.
//!
//! Version 1.1.0 (examples/chat-room-1.1.0) keeps members in a map with
//! their join time and a short history; its `code_change` builds that from
//! this version's state and its `downgrade` writes this version's state
//! back.

use chat_wire::{JoinReply, RoomCall, RoomInfo, RoomReply, ToSession};
use relive_abi::prelude::*;

/// The state.
#[derive(Serialize, Deserialize)]
pub struct Room {
    /// The room's name.
    name: String,
    /// The members, in the order they joined.
    members: Vec<Member>,
}

/// A member.
#[derive(Serialize, Deserialize, Clone)]
pub struct Member {
    /// Its session process.
    pid: Pid,
    /// Its nick.
    nick: String,
    /// The room's monitor of it.
    monitor: MonitorRef,
}

/// Init argument: the opening session's [`chat_wire::RoomArgs`] merged
/// over the template's `args`.
#[derive(Deserialize)]
pub struct Start {
    name: String,
}

impl Room {
    fn nicks(&self) -> Vec<String> {
        self.members.iter().map(|m| m.nick.clone()).collect()
    }

    /// Sends `message` to every member but `except`.
    fn tell(&self, message: &ToSession, except: Option<Pid>, ctx: &mut Ctx<'_>) {
        for member in self.members.iter().filter(|m| Some(m.pid) != except) {
            let _ = ctx.send(member.pid, message);
        }
    }

    fn join(&mut self, nick: String, session: Pid, rejoin: bool, ctx: &mut Ctx<'_>) -> JoinReply {
        if !self.members.iter().any(|m| m.pid == session) {
            let monitor = ctx.monitor(session);
            self.members.push(Member { pid: session, nick: nick.clone(), monitor });
            if !rejoin {
                self.tell(&ToSession::Joined { room: self.name.clone(), nick }, Some(session), ctx);
            }
        }
        JoinReply { members: self.nicks(), history: Vec::new() }
    }

    /// Removes `session`; tells the others, with the exit reason when its
    /// monitor fired (`why`).
    fn leave(&mut self, session: Pid, why: Option<String>, ctx: &mut Ctx<'_>) -> bool {
        let Some(at) = self.members.iter().position(|m| m.pid == session) else { return false };
        let member = self.members.remove(at);
        if why.is_none() {
            ctx.demonitor(member.monitor);
        }
        self.tell(&ToSession::Left { room: self.name.clone(), nick: member.nick, why }, None, ctx);
        true
    }
}

impl Behaviour for Room {
    type Init = Start;
    type Call = RoomCall;
    type Reply = RoomReply;
    type Cast = ();
    type Info = ();

    fn init(start: Start, ctx: &mut Ctx<'_>) -> Result<Self, Error> {
        if !chat_wire::valid_name(&start.name) {
            return Err(Error::new(format!("{:?} is not a room name", start.name)));
        }
        // A second room of the same name fails here: the session that
        // started it then joins the first.
        ctx.register(&chat_wire::room_name(&start.name))?;
        Ok(Room { name: start.name, members: Vec::new() })
    }

    fn handle_call(&mut self, request: RoomCall, ctx: &mut Ctx<'_>) -> RoomReply {
        match request {
            RoomCall::Join { nick, session, rejoin } => {
                RoomReply::Joined(self.join(nick, session, rejoin, ctx))
            }
            RoomCall::Part { session } => RoomReply::Flag(self.leave(session, None, ctx)),
            RoomCall::Say { session, text } => {
                let Some(member) = self.members.iter().find(|m| m.pid == session) else {
                    return RoomReply::Flag(false);
                };
                let said = ToSession::Said { room: self.name.clone(), nick: member.nick.clone(), text };
                self.tell(&said, None, ctx);
                RoomReply::Flag(true)
            }
            RoomCall::Members => RoomReply::Members(self.nicks()),
            RoomCall::Info => RoomReply::Info(RoomInfo {
                name: self.name.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                count: self.members.len(),
                members: self.nicks(),
                history: 0,
                history_limit: 0,
            }),
            RoomCall::Version => RoomReply::Text(env!("CARGO_PKG_VERSION").to_string()),
            RoomCall::Crash => panic!("room {} crashed on request", self.name),
        }
    }

    fn handle_info(&mut self, info: Info<()>, ctx: &mut Ctx<'_>) {
        if let Info::Down { pid, reason, .. } = info {
            self.leave(pid, Some(reason), ctx);
        }
    }
}

relive_abi::export_module!(Room, name = "chat_room");
