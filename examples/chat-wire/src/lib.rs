//! The chat example's wire: the messages its processes send each other,
//! the names they find each other by, and the line splitting of a
//! session's connection. A plain library (like kv's `resp`), linked into
//! every chat module: 1.0.0 and 1.1.0 sessions and rooms speak these same
//! messages, so during an upgrade, when some processes already run 1.1.0
//! and others still run 1.0.0, every message still decodes on both sides.
//! A change here must stay readable by the versions that link the old
//! copy (add fields with `#[serde(default)]`, never rename).
//!
//! Who talks to whom:
//! - the acceptor starts each session under the `sessions` supervisor
//!   ([`start_child`] with [`SessionArgs`]), hands it the connection and
//!   tells it [`ToSession::Attached`];
//! - a session finds a room by its registered name ([`room_name`]), starts
//!   it under the `rooms` supervisor if there is none ([`RoomArgs`]), and
//!   calls it ([`RoomCall`], answered with the parts of [`RoomReply`]);
//! - a room tells its members what happens with [`ToSession`] messages;
//!   how a member shows them to its client is the session's business (the
//!   format is what changes between 1.0.0 and 1.1.0).

use std::time::Duration;

use relive_abi::prelude::*;

/// The simple_one_for_one supervisor the rooms run under.
pub const ROOMS: &str = "rooms";
/// The simple_one_for_one supervisor the sessions run under.
pub const SESSIONS: &str = "sessions";
/// How long a process waits for a room or a supervisor to answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest nick or room name.
pub const MAX_NAME: usize = 24;

/// The name a room registers as: `room-<room>`.
pub fn room_name(room: &str) -> String {
    format!("room-{room}")
}

/// The name a session with a nick registers as: `nick-<nick>` (the
/// registry keeps nicks unique on the node).
pub fn nick_name(nick: &str) -> String {
    format!("nick-{nick}")
}

/// Whether `name` may be a nick or a room name: 1 to [`MAX_NAME`] of
/// `[A-Za-z0-9_-]`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A session's start arguments from the acceptor; the supervisor merges
/// them over its template's `args` (where `max_line` comes from).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct SessionArgs {
    /// The connection the session will own.
    pub port: PortId,
    /// The client's address.
    pub peer: String,
}

/// A room's start arguments from the session that opens it; merged over
/// the template's `args`. The supervisor keeps them, so a room restarted
/// after a crash is the same room (same name) again, empty.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RoomArgs {
    /// The room's name (it registers as [`room_name`]).
    pub name: String,
}

/// Starts a child of the simple_one_for_one supervisor `supervisor` with
/// `args` (the `{"start_child": ARGS}` call every supervisor answers); the
/// child's `init` has run when this returns.
///
/// # Errors
/// No such supervisor, or the child failed to start (its reason).
pub fn start_child<A: Serialize>(ctx: &mut Ctx<'_>, supervisor: &str, args: &A) -> Result<Pid, Error> {
    ctx.start_child(supervisor, args, CALL_TIMEOUT)
}

/// One child as a supervisor's `"which_children"` lists it.
#[derive(Deserialize, Debug)]
pub struct ChildInfo {
    /// Its pid; none while it is being restarted.
    pub pid: Option<u64>,
    /// How many times its supervisor restarted it.
    #[serde(default)]
    pub restarts: u64,
}

/// The children of `supervisor`.
///
/// # Errors
/// No such supervisor, or it did not answer.
pub fn which_children(ctx: &mut Ctx<'_>, supervisor: &str) -> Result<Vec<ChildInfo>, Error> {
    ctx.call_named(supervisor, &"which_children", CALL_TIMEOUT)
}

/// The calls a room answers (from sessions, and from `relive call
/// room-<name> ...` as JSON: `"Members"`, `"Info"`, `{"Join": ...}`).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub enum RoomCall {
    /// `session` joins as `nick`; the room monitors it. `rejoin`: it was a
    /// member before the room restarted, so the others are not told again.
    /// Answered with a [`JoinReply`].
    Join {
        /// The member's nick.
        nick: String,
        /// The member's session process.
        session: Pid,
        /// A return after the room restarted.
        #[serde(default)]
        rejoin: bool,
    },
    /// `session` leaves. Answered with `true` if it was a member.
    Part {
        /// The member's session process.
        session: Pid,
    },
    /// `session` says `text` to every member (itself included). Answered
    /// with `true`, or `false` if it is not a member.
    Say {
        /// The speaker's session process.
        session: Pid,
        /// What it says.
        text: String,
    },
    /// The members' nicks, in the order they joined.
    Members,
    /// A [`RoomInfo`].
    Info,
    /// The version of the room's code.
    Version,
    /// Makes the room panic, as a bug would: its supervisor restarts it
    /// (empty) and its members' monitors fire. For the supervision
    /// scenarios and for trying it by hand.
    Crash,
}

/// A room's replies, untagged: each call's reply is its own shape (a
/// session decodes the one it expects, `relive call` shows plain JSON).
#[derive(Serialize, Clone, Debug)]
#[serde(untagged)]
pub enum RoomReply {
    /// To `Join`.
    Joined(JoinReply),
    /// To `Info`.
    Info(RoomInfo),
    /// To `Members`.
    Members(Vec<String>),
    /// To `Version`.
    Text(String),
    /// To `Part` and `Say`.
    Flag(bool),
}

/// What a session learns when it joins.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct JoinReply {
    /// The members' nicks after the join (the new one included).
    pub members: Vec<String>,
    /// The room's latest messages, oldest first (1.1.0 rooms keep some;
    /// 1.0.0 rooms keep none and send none).
    #[serde(default)]
    pub history: Vec<Said>,
}

/// A message kept in a room's history.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Said {
    /// Who said it.
    pub nick: String,
    /// What.
    pub text: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// A room seen from outside.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RoomInfo {
    /// Its name.
    pub name: String,
    /// The version of its code.
    pub version: String,
    /// How many members it has.
    pub count: usize,
    /// The members' nicks, in the order they joined.
    pub members: Vec<String>,
    /// How many messages its history holds.
    #[serde(default)]
    pub history: usize,
    /// How many it keeps at most.
    #[serde(default)]
    pub history_limit: usize,
}

/// Plain messages to a session (its `Info` type): from the acceptor, from
/// its rooms, and from itself.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub enum ToSession {
    /// The acceptor handed the connection over: the session owns it now
    /// and greets the client.
    Attached,
    /// An event of the connection that reached the acceptor before the
    /// hand-over (a client that wrote before the greeting).
    Stray(PortEvent),
    /// A member said something in a room.
    Said {
        /// The room.
        room: String,
        /// Who.
        nick: String,
        /// What.
        text: String,
    },
    /// Someone joined a room this session is in.
    Joined {
        /// The room.
        room: String,
        /// Who.
        nick: String,
    },
    /// Someone left a room this session is in: `why` is `None` for a PART,
    /// or the exit reason of a member whose session ended.
    Left {
        /// The room.
        room: String,
        /// Who.
        nick: String,
        /// The exit reason, when the member's session ended.
        why: Option<String>,
    },
    /// Self-sent: try again to rejoin `room` after it went down.
    Rejoin {
        /// The room.
        room: String,
        /// Attempts so far.
        attempt: u32,
    },
}

/// A connection's input split into lines, kept in the session's state (so
/// a line half-received when an upgrade comes is finished by the new code).
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct LineBuffer {
    /// Bytes of a line not yet complete.
    partial: Vec<u8>,
    /// Inside a line that was too long: drop bytes up to its end.
    discarding: bool,
}

/// What [`LineBuffer::push`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A complete line, without its `\n` or `\r\n` (invalid UTF-8 replaced).
    Line(String),
    /// A line longer than the limit: it is dropped, whole.
    TooLong,
}

impl LineBuffer {
    /// Adds `bytes` and returns the lines they complete. A line longer than
    /// `max_line` bytes gives one [`Input::TooLong`] as soon as it passes
    /// the limit, and its bytes up to the next newline are dropped.
    pub fn push(&mut self, bytes: &[u8], max_line: usize) -> Vec<Input> {
        let mut found = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            match rest.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    let (head, tail) = (&rest[..end], &rest[end + 1..]);
                    rest = tail;
                    if self.discarding {
                        self.discarding = false;
                        continue;
                    }
                    self.partial.extend_from_slice(head);
                    let mut line = std::mem::take(&mut self.partial);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    if line.len() > max_line {
                        found.push(Input::TooLong);
                    } else {
                        found.push(Input::Line(String::from_utf8_lossy(&line).into_owned()));
                    }
                }
                None => {
                    if !self.discarding {
                        self.partial.extend_from_slice(rest);
                        // One byte of slack: a `\r` may still come before the
                        // `\n`.
                        if self.partial.len() > max_line + 1 {
                            self.partial.clear();
                            self.discarding = true;
                            found.push(Input::TooLong);
                        }
                    }
                    rest = &[];
                }
            }
        }
        found
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> Input {
        Input::Line(text.to_string())
    }

    #[test]
    fn lines_split_across_reads_and_crlf() {
        let mut buf = LineBuffer::default();
        assert_eq!(buf.push(b"NICK al", 16), []);
        assert_eq!(buf.push(b"ice\r\nJOIN lobby\nPA", 16), [line("NICK alice"), line("JOIN lobby")]);
        assert_eq!(buf.push(b"RT lobby\n\n", 16), [line("PART lobby"), line("")]);
    }

    #[test]
    fn a_long_line_is_dropped_whole_once() {
        let mut buf = LineBuffer::default();
        assert_eq!(buf.push(b"0123456789", 8), [Input::TooLong]);
        assert_eq!(buf.push(b"more of the same line", 8), []);
        assert_eq!(buf.push(b"end\nok\n", 8), [line("ok")]);
        // Complete in one read, too long by one byte; exactly the limit is fine.
        assert_eq!(buf.push(b"123456789\n12345678\r\n", 8), [Input::TooLong, line("12345678")]);
    }

    #[test]
    fn names() {
        assert!(valid_name("lobby") && valid_name("a_b-9"));
        assert!(!valid_name("") && !valid_name("two words") && !valid_name(&"x".repeat(MAX_NAME + 1)));
        assert_eq!(room_name("lobby"), "room-lobby");
        assert_eq!(nick_name("alice"), "nick-alice");
    }
}
