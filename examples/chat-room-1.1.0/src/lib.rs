//! A chat room (module `chat_room`), version 1.1.0: 1.0.0 (see
//! examples/chat-room-1.0.0) with members kept in a map by session pid,
//! each with the time it joined, and the room's last messages (at most
//! `history`, the start argument: the chat 1.1.0 release's template says
//! 5; 10 when absent), which a session gets when it joins.
//!
//! The state's type changed, so the upgrade from 1.0.0 runs `code_change`:
//! every member of 1.0.0's list goes into the map in the same order (its
//! join time is unknown: the time of the upgrade stands for it) with an
//! empty history of the default size (`code_change` cannot see the
//! release's template; the template applies when the room next starts, as
//! a changed child spec does in OTP). `downgrade` to 1.0.0 writes the list
//! back in join order and drops the history, which 1.0.0 has no place
//! for. The monitors are the node's, not the code's: they carry over both
//! ways untouched.

use std::collections::{BTreeMap, VecDeque};

use chat_wire::{JoinReply, RoomCall, RoomInfo, RoomReply, Said, ToSession};
use relive_abi::prelude::*;

/// The history a room keeps unless its start argument says otherwise, and
/// the one a room upgraded from 1.0.0 gets.
const DEFAULT_HISTORY: usize = 10;

/// The state.
#[derive(Serialize, Deserialize)]
pub struct Room {
    /// The room's name.
    name: String,
    /// The members, by session.
    members: BTreeMap<Pid, Member>,
    /// The join order the next member gets.
    next_order: u64,
    /// The last messages, oldest first.
    history: VecDeque<Said>,
    /// How many messages `history` keeps.
    history_limit: usize,
}

/// A member.
#[derive(Serialize, Deserialize, Clone)]
pub struct Member {
    /// Its nick.
    nick: String,
    /// The room's monitor of it.
    monitor: MonitorRef,
    /// When it joined, in milliseconds since the Unix epoch.
    joined_at_ms: u64,
    /// Its place in the join order.
    order: u64,
}

/// Version 1.0.0's state, as its bytes read.
#[derive(Serialize, Deserialize)]
struct RoomV1 {
    name: String,
    members: Vec<MemberV1>,
}

/// Version 1.0.0's member.
#[derive(Serialize, Deserialize)]
struct MemberV1 {
    pid: Pid,
    nick: String,
    monitor: MonitorRef,
}

/// Init argument: the opening session's [`chat_wire::RoomArgs`] merged
/// over the template's `args`.
#[derive(Deserialize)]
pub struct Start {
    name: String,
    #[serde(default = "default_history")]
    history: usize,
}

fn default_history() -> usize {
    DEFAULT_HISTORY
}

impl Room {
    /// The members in join order.
    fn in_order(&self) -> Vec<(&Pid, &Member)> {
        let mut members: Vec<(&Pid, &Member)> = self.members.iter().collect();
        members.sort_by_key(|(_, m)| m.order);
        members
    }

    fn nicks(&self) -> Vec<String> {
        self.in_order().into_iter().map(|(_, m)| m.nick.clone()).collect()
    }

    /// Sends `message` to every member but `except`.
    fn tell(&self, message: &ToSession, except: Option<Pid>, ctx: &mut Ctx<'_>) {
        for pid in self.members.keys().filter(|&&pid| Some(pid) != except) {
            let _ = ctx.send(*pid, message);
        }
    }

    fn join(&mut self, nick: String, session: Pid, rejoin: bool, ctx: &mut Ctx<'_>) -> JoinReply {
        if !self.members.contains_key(&session) {
            let monitor = ctx.monitor(session);
            let member = Member {
                nick: nick.clone(),
                monitor,
                joined_at_ms: chat_wire::now_ms(),
                order: self.next_order,
            };
            self.next_order += 1;
            self.members.insert(session, member);
            if !rejoin {
                self.tell(&ToSession::Joined { room: self.name.clone(), nick }, Some(session), ctx);
            }
        }
        JoinReply { members: self.nicks(), history: self.history.iter().cloned().collect() }
    }

    /// Removes `session`; tells the others, with the exit reason when its
    /// monitor fired (`why`).
    fn leave(&mut self, session: Pid, why: Option<String>, ctx: &mut Ctx<'_>) -> bool {
        let Some(member) = self.members.remove(&session) else { return false };
        if why.is_none() {
            ctx.demonitor(member.monitor);
        }
        self.tell(&ToSession::Left { room: self.name.clone(), nick: member.nick, why }, None, ctx);
        true
    }

    fn say(&mut self, session: Pid, text: String, ctx: &mut Ctx<'_>) -> bool {
        let Some(member) = self.members.get(&session) else { return false };
        let said = Said { nick: member.nick.clone(), text, at_ms: chat_wire::now_ms() };
        self.tell(
            &ToSession::Said { room: self.name.clone(), nick: said.nick.clone(), text: said.text.clone() },
            None,
            ctx,
        );
        self.history.push_back(said);
        while self.history.len() > self.history_limit {
            self.history.pop_front();
        }
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
        Ok(Room {
            name: start.name,
            members: BTreeMap::new(),
            next_order: 0,
            history: VecDeque::new(),
            history_limit: start.history,
        })
    }

    fn handle_call(&mut self, request: RoomCall, ctx: &mut Ctx<'_>) -> RoomReply {
        match request {
            RoomCall::Join { nick, session, rejoin } => {
                RoomReply::Joined(self.join(nick, session, rejoin, ctx))
            }
            RoomCall::Part { session } => RoomReply::Flag(self.leave(session, None, ctx)),
            RoomCall::Say { session, text } => RoomReply::Flag(self.say(session, text, ctx)),
            RoomCall::Members => RoomReply::Members(self.nicks()),
            RoomCall::Info => RoomReply::Info(RoomInfo {
                name: self.name.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                count: self.members.len(),
                members: self.nicks(),
                history: self.history.len(),
                history_limit: self.history_limit,
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

    fn code_change(from: &Version, old: StateBytes, _extra: Extra) -> Result<Self, Error> {
        if (from.major, from.minor) != (1, 0) {
            return old.decode();
        }
        let v1: RoomV1 = old.decode()?;
        let now = chat_wire::now_ms();
        let members: BTreeMap<Pid, Member> = v1
            .members
            .into_iter()
            .enumerate()
            .map(|(order, m)| {
                (m.pid, Member { nick: m.nick, monitor: m.monitor, joined_at_ms: now, order: order as u64 })
            })
            .collect();
        Ok(Room {
            name: v1.name,
            next_order: members.len() as u64,
            members,
            history: VecDeque::new(),
            history_limit: DEFAULT_HISTORY,
        })
    }

    fn downgrade(&self, to: &Version) -> Result<StateBytes, Error> {
        if (to.major, to.minor) != (1, 0) {
            return StateBytes::encode(self);
        }
        let members = self
            .in_order()
            .into_iter()
            .map(|(pid, m)| MemberV1 { pid: *pid, nick: m.nick.clone(), monitor: m.monitor })
            .collect();
        StateBytes::encode(&RoomV1 { name: self.name.clone(), members })
    }
}

relive_abi::export_module!(Room, name = "chat_room");
