//! A chat session (module `chat_session`), version 1.0.0: one process per
//! client connection, started by the acceptor under the `sessions`
//! supervisor (`restart = "temporary"`: a session that ends is not
//! restarted, its connection is gone).
//!
//! # The protocol
//!
//! Lines of text, `\n` or `\r\n` ended, at most `max_line` bytes (the
//! session's start argument, from the release's template: a longer line is
//! dropped whole with `ERR line too long`). The server speaks first:
//!
//! ```text
//! S: OK welcome to relive chat 1.0.0; NICK <name> to begin
//! C: NICK alice                S: OK you are alice
//! C: JOIN lobby                S: OK joined lobby (2 members)
//! C: MSG lobby hello           S: lobby alice: hello      (to every member, alice too)
//! C: WHO lobby                 S: OK lobby: bob alice
//! C: ROOMS                     S: OK rooms: lobby(2)
//! C: PART lobby                S: OK left lobby
//! C: QUIT                      S: OK bye                  (and the server closes)
//! ```
//!
//! Other lines the server sends: `ERR <why>` for a command that failed,
//! `NOTE <nick> joined <room>`, `NOTE <nick> left <room>` (a PART),
//! `NOTE <nick> left <room> (disconnected)` or `(session ended: <reason>)`
//! (the member's session ended: the room's monitor of it fired), and
//! `NOTE <room> went down (<reason>); rejoining` then `NOTE rejoined <room>
//! (<n> members)` when a room crashed and its supervisor restarted it.
//!
//! # Processes and names
//!
//! A nick is the session's registered name `nick-<nick>`, so nicks are
//! unique on the node. A room is a process registered as `room-<name>`
//! under the `rooms` supervisor; JOIN starts it there when there is none.
//! The session monitors every room it is in: when one goes down it tells
//! the client and rejoins the room once the supervisor has restarted it.
//!
//! Version 1.1.0 (examples/chat-session-1.1.0) shows messages as
//! `[room] <nick> text` and replays a room's history on JOIN; the state is
//! the same, so the upgrade and the downgrade move it as it is.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chat_wire::{Input, JoinReply, LineBuffer, RoomArgs, RoomCall, RoomInfo, ToSession};
use relive_abi::prelude::*;

/// How often, and how many times, a session looks for a room that went
/// down before it gives up (the supervisor restarts a room at once; this
/// covers a busy node).
const REJOIN_EVERY: Duration = Duration::from_millis(50);
const REJOIN_ATTEMPTS: u32 = 200;

/// The state.
#[derive(Serialize, Deserialize)]
pub struct Session {
    /// The client's connection.
    port: PortId,
    /// The client's address.
    peer: String,
    /// The longest line taken, in bytes.
    max_line: usize,
    /// The nick, once chosen.
    nick: Option<String>,
    /// The rooms it is in.
    rooms: BTreeMap<String, Membership>,
    /// Rooms that went down and are being rejoined.
    rejoining: BTreeSet<String>,
    /// Input not yet a complete line.
    input: LineBuffer,
    /// The acceptor handed the connection over.
    attached: bool,
}

/// A room this session is in.
#[derive(Serialize, Deserialize)]
struct Membership {
    /// The room's process.
    pid: Pid,
    /// This session's monitor of it.
    monitor: MonitorRef,
}

/// Init argument: the acceptor's [`chat_wire::SessionArgs`] merged over the
/// template's `args`.
#[derive(Deserialize)]
pub struct Start {
    port: PortId,
    peer: String,
    #[serde(default = "default_max_line")]
    max_line: usize,
}

fn default_max_line() -> usize {
    512
}

/// Requests of the `call` API.
#[derive(Deserialize)]
pub enum Request {
    /// A [`View`] of the session.
    Info,
    /// The version of the code answering.
    Version,
}

/// Replies.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// To `Info`.
    View(View),
    /// To `Version`.
    Text(String),
}

/// A session seen from outside.
#[derive(Serialize)]
pub struct View {
    peer: String,
    nick: Option<String>,
    rooms: Vec<String>,
    max_line: usize,
    version: String,
}

/// What the connection does after a line.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Quit,
}

/// The line that shows a message said in a room.
fn said_line(room: &str, nick: &str, text: &str) -> String {
    format!("{room} {nick}: {text}")
}

fn members(n: usize) -> String {
    if n == 1 { "1 member".to_string() } else { format!("{n} members") }
}

impl Session {
    /// Writes `lines` to the client, in one write.
    fn write(&self, lines: &[String], ctx: &mut Ctx<'_>) {
        if lines.is_empty() {
            return;
        }
        let mut bytes = lines.join("\n").into_bytes();
        bytes.push(b'\n');
        let _ = ctx.port_send(self.port, &bytes);
    }

    /// The room's process: the one registered, else a new one started under
    /// the rooms supervisor (if another session started it meanwhile, its
    /// name is taken and ours fails to start: then that one).
    fn open_room(room: &str, ctx: &mut Ctx<'_>) -> Result<Pid, Error> {
        let name = chat_wire::room_name(room);
        if let Some(pid) = ctx.whereis(&name) {
            return Ok(pid);
        }
        match chat_wire::start_child(ctx, chat_wire::ROOMS, &RoomArgs { name: room.to_string() }) {
            Ok(pid) => Ok(pid),
            Err(error) => ctx.whereis(&name).ok_or(error),
        }
    }

    /// Joins the room `pid` as this session's nick, monitoring it first so
    /// that a crash right after the join is noticed too.
    fn join(&mut self, room: &str, pid: Pid, rejoin: bool, ctx: &mut Ctx<'_>) -> Result<JoinReply, Error> {
        let nick = self.nick.clone().ok_or("no nick")?;
        let monitor = ctx.monitor(pid);
        let call = RoomCall::Join { nick, session: ctx.pid(), rejoin };
        match ctx.call::<_, JoinReply>(pid, &call, chat_wire::CALL_TIMEOUT) {
            Ok(reply) => {
                self.rooms.insert(room.to_string(), Membership { pid, monitor });
                Ok(reply)
            }
            Err(error) => {
                ctx.demonitor(monitor);
                Err(error)
            }
        }
    }

    /// Runs one command line, appending what to send back to `out`.
    fn command(&mut self, line: &str, out: &mut Vec<String>, ctx: &mut Ctx<'_>) -> Flow {
        let line = line.trim();
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        match word.to_ascii_uppercase().as_str() {
            "" => {}
            "HELP" => out.push(
                "OK commands: NICK name, JOIN room, PART room, MSG room text, WHO room, ROOMS, QUIT".into(),
            ),
            "NICK" => out.push(self.nick(rest, ctx)),
            "JOIN" => self.join_command(rest, out, ctx),
            "PART" => out.push(self.part(rest, ctx)),
            "MSG" => {
                let (room, text) = rest.split_once(' ').unwrap_or((rest, ""));
                if let Some(error) = self.say(room, text.trim(), ctx) {
                    out.push(error);
                }
            }
            "WHO" => out.push(self.who(rest, ctx)),
            "ROOMS" => out.push(Self::rooms(ctx)),
            "QUIT" => {
                out.push("OK bye".into());
                return Flow::Quit;
            }
            other => out.push(format!("ERR unknown command {other}; HELP lists them")),
        }
        Flow::Continue
    }

    fn nick(&mut self, nick: &str, ctx: &mut Ctx<'_>) -> String {
        if !chat_wire::valid_name(nick) {
            return "ERR usage: NICK name (1 to 24 of A-Z a-z 0-9 _ -)".into();
        }
        if self.nick.as_deref() == Some(nick) {
            return format!("OK you are {nick}");
        }
        if !self.rooms.is_empty() || !self.rejoining.is_empty() {
            return "ERR leave your rooms before changing your nick".into();
        }
        if let Some(old) = &self.nick {
            ctx.unregister(&chat_wire::nick_name(old));
        }
        match ctx.register(&chat_wire::nick_name(nick)) {
            Ok(()) => {
                self.nick = Some(nick.to_string());
                format!("OK you are {nick}")
            }
            Err(_) => {
                if let Some(old) = &self.nick {
                    let _ = ctx.register(&chat_wire::nick_name(old));
                }
                format!("ERR nick {nick} is taken")
            }
        }
    }

    fn join_command(&mut self, room: &str, out: &mut Vec<String>, ctx: &mut Ctx<'_>) {
        if self.nick.is_none() {
            return out.push("ERR choose a nick first: NICK name".into());
        }
        if !chat_wire::valid_name(room) {
            return out.push("ERR usage: JOIN room (1 to 24 of A-Z a-z 0-9 _ -)".into());
        }
        if self.rooms.contains_key(room) {
            return out.push(format!("ERR you are already in {room}"));
        }
        self.rejoining.remove(room);
        let joined = Self::open_room(room, ctx).and_then(|pid| self.join(room, pid, false, ctx));
        match joined {
            Ok(reply) => {
                out.push(format!("OK joined {room} ({})", members(reply.members.len())));
            }
            Err(error) => out.push(format!("ERR cannot join {room}: {error}")),
        }
    }

    fn part(&mut self, room: &str, ctx: &mut Ctx<'_>) -> String {
        if self.rejoining.remove(room) {
            return format!("OK left {room}");
        }
        let Some(membership) = self.rooms.remove(room) else {
            return format!("ERR you are not in {room}");
        };
        ctx.demonitor(membership.monitor);
        let _ = ctx.call::<_, bool>(
            membership.pid,
            &RoomCall::Part { session: ctx.pid() },
            chat_wire::CALL_TIMEOUT,
        );
        format!("OK left {room}")
    }

    /// Says `text` in `room`; the room echoes it to every member, this one
    /// too, so success needs no reply. Returns the error line, if any.
    fn say(&mut self, room: &str, text: &str, ctx: &mut Ctx<'_>) -> Option<String> {
        if text.is_empty() {
            return Some("ERR usage: MSG room text".into());
        }
        let Some(membership) = self.rooms.get(room) else {
            return Some(format!("ERR you are not in {room}"));
        };
        let call = RoomCall::Say { session: ctx.pid(), text: text.to_string() };
        match ctx.call::<_, bool>(membership.pid, &call, chat_wire::CALL_TIMEOUT) {
            Ok(true) => None,
            Ok(false) => Some(format!("ERR you are not in {room}")),
            Err(error) => Some(format!("ERR {room} did not take it: {error}")),
        }
    }

    fn who(&mut self, room: &str, ctx: &mut Ctx<'_>) -> String {
        let Some(pid) = ctx.whereis(&chat_wire::room_name(room)) else {
            return format!("ERR no room {room}");
        };
        match ctx.call::<_, Vec<String>>(pid, &RoomCall::Members, chat_wire::CALL_TIMEOUT) {
            Ok(nicks) => format!("OK {room}: {}", nicks.join(" ")),
            Err(error) => format!("ERR {room} did not answer: {error}"),
        }
    }

    /// Every room of the node, from the rooms supervisor's children.
    fn rooms(ctx: &mut Ctx<'_>) -> String {
        let children = match chat_wire::which_children(ctx, chat_wire::ROOMS) {
            Ok(children) => children,
            Err(error) => return format!("ERR cannot list the rooms: {error}"),
        };
        let mut rooms: Vec<(String, usize)> = children
            .iter()
            .filter_map(|child| child.pid)
            .filter_map(|pid| {
                ctx.call::<_, RoomInfo>(Pid(pid), &RoomCall::Info, chat_wire::CALL_TIMEOUT).ok()
            })
            .map(|info| (info.name, info.members.len()))
            .collect();
        rooms.sort();
        if rooms.is_empty() {
            return "OK rooms: none".into();
        }
        let listed: Vec<String> = rooms.iter().map(|(name, n)| format!("{name}({n})")).collect();
        format!("OK rooms: {}", listed.join(" "))
    }

    /// Greets the client, once: when the acceptor says the connection is
    /// ours, or at its first bytes if they overtake that message (they may:
    /// the acceptor hands the connection over, then tells us).
    fn greet(&mut self, ctx: &mut Ctx<'_>) {
        if !self.attached {
            self.attached = true;
            let greeting =
                format!("OK welcome to relive chat {}; NICK <name> to begin", env!("CARGO_PKG_VERSION"));
            self.write(&[greeting], ctx);
        }
    }

    /// Bytes from the client: runs every complete line.
    fn data(&mut self, bytes: &[u8], ctx: &mut Ctx<'_>) {
        self.greet(ctx);
        let mut out = Vec::new();
        let mut flow = Flow::Continue;
        for input in self.input.push(bytes, self.max_line) {
            match input {
                Input::Line(line) => flow = self.command(&line, &mut out, ctx),
                Input::TooLong => out.push(format!("ERR line too long (max {} bytes)", self.max_line)),
            }
            if flow == Flow::Quit {
                break;
            }
        }
        self.write(&out, ctx);
        if flow == Flow::Quit {
            let _ = ctx.port_close(self.port);
            ctx.stop("normal");
        }
    }

    fn port_event(&mut self, event: PortEvent, ctx: &mut Ctx<'_>) {
        match event {
            PortEvent::Data { bytes, .. } => self.data(&bytes, ctx),
            // The client went away: this session ends, and each of its
            // rooms learns it from its monitor.
            PortEvent::Closed { .. } => ctx.stop("normal"),
            PortEvent::Accepted { .. } => {}
        }
    }

    /// A monitored room went down: tell the client and rejoin it once its
    /// supervisor has restarted it.
    fn room_down(&mut self, monitor: MonitorRef, reason: &str, ctx: &mut Ctx<'_>) {
        let Some(room) = self.rooms.iter().find(|(_, m)| m.monitor == monitor).map(|(r, _)| r.clone()) else {
            return;
        };
        self.rooms.remove(&room);
        self.rejoining.insert(room.clone());
        self.write(&[format!("NOTE {room} went down ({reason}); rejoining")], ctx);
        let me = ctx.pid();
        let _ = ctx.send(me, &ToSession::Rejoin { room, attempt: 0 });
    }

    fn rejoin(&mut self, room: String, attempt: u32, ctx: &mut Ctx<'_>) {
        if !self.rejoining.contains(&room) {
            return; // parted or joined again meanwhile
        }
        let joined = ctx
            .whereis(&chat_wire::room_name(&room))
            .ok_or_else(|| Error::new("not restarted yet"))
            .and_then(|pid| self.join(&room, pid, true, ctx));
        match joined {
            Ok(reply) => {
                self.rejoining.remove(&room);
                self.write(&[format!("NOTE rejoined {room} ({})", members(reply.members.len()))], ctx);
            }
            Err(_) if attempt < REJOIN_ATTEMPTS => {
                let me = ctx.pid();
                let _ = ctx.send_after(me, &ToSession::Rejoin { room, attempt: attempt + 1 }, REJOIN_EVERY);
            }
            Err(error) => {
                self.rejoining.remove(&room);
                self.write(&[format!("NOTE {room} is gone ({error}); JOIN {room} to open it again")], ctx);
            }
        }
    }

    fn message(&mut self, message: ToSession, ctx: &mut Ctx<'_>) {
        let line = match message {
            ToSession::Attached => return self.greet(ctx),
            ToSession::Stray(event) => return self.port_event(event, ctx),
            ToSession::Said { room, nick, text } => said_line(&room, &nick, &text),
            ToSession::Joined { room, nick } => format!("NOTE {nick} joined {room}"),
            ToSession::Left { room, nick, why: None } => format!("NOTE {nick} left {room}"),
            ToSession::Left { room, nick, why: Some(why) } if why == "normal" => {
                format!("NOTE {nick} left {room} (disconnected)")
            }
            ToSession::Left { room, nick, why: Some(why) } => {
                format!("NOTE {nick} left {room} (session ended: {why})")
            }
            ToSession::Rejoin { room, attempt } => return self.rejoin(room, attempt, ctx),
        };
        self.write(&[line], ctx);
    }
}

impl Behaviour for Session {
    type Init = Start;
    type Call = Request;
    type Reply = Reply;
    type Cast = ();
    type Info = ToSession;

    fn init(start: Start, _ctx: &mut Ctx<'_>) -> Result<Self, Error> {
        if start.max_line == 0 {
            return Err(Error::new("max_line = 0: a session needs room for a line"));
        }
        Ok(Session {
            port: start.port,
            peer: start.peer,
            max_line: start.max_line,
            nick: None,
            rooms: BTreeMap::new(),
            rejoining: BTreeSet::new(),
            input: LineBuffer::default(),
            attached: false,
        })
    }

    fn handle_call(&mut self, request: Request, _ctx: &mut Ctx<'_>) -> Reply {
        match request {
            Request::Info => Reply::View(View {
                peer: self.peer.clone(),
                nick: self.nick.clone(),
                rooms: self.rooms.keys().cloned().collect(),
                max_line: self.max_line,
                version: env!("CARGO_PKG_VERSION").to_string(),
            }),
            Request::Version => Reply::Text(env!("CARGO_PKG_VERSION").to_string()),
        }
    }

    fn handle_info(&mut self, info: Info<ToSession>, ctx: &mut Ctx<'_>) {
        match info {
            Info::Port(event) => self.port_event(event, ctx),
            Info::Message(message) => self.message(message, ctx),
            Info::Down { monitor, reason, .. } => self.room_down(monitor, &reason, ctx),
            Info::Exit { .. } => {}
        }
    }
}

relive_abi::export_module!(Session, name = "chat_session");
