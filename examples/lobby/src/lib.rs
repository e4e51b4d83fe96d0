//! The lobby module, version 1.0.0 (the tree example releases,
//! examples/releases/tree-*): a module process that starts processes under
//! a simple_one_for_one supervisor, and keeps a value of the application's
//! configuration.
//!
//! A module starts a dynamic child by calling the supervisor by its
//! registered name with `{"start_child": ARGS}` (the supervisor starts a
//! child from its template, with `ARGS` over the template's `args`, and
//! answers `{"pid": PID}`), and stops one with `{"terminate_child": PID}`.
//!
//! Calls (JSON): `{"Open": {"label": "x", "count": 5}}` (both optional) →
//! the new room's pid; `{"Close": PID}` → `null`; `"Opened"` → rooms opened
//! so far; `"Motd"` → the configuration's `motd` as this process last
//! read it (in `init`, then in each `config_change`). `config_change`
//! refuses a new configuration with `refuse_changes = true` (to test an
//! upgrade that a process refuses).

use std::time::Duration;

use relive_abi::prelude::*;

/// How long the supervisor may take to start or stop a room.
const ROOMS_TIMEOUT: Duration = Duration::from_secs(5);

/// The state.
#[derive(Serialize, Deserialize)]
pub struct Lobby {
    /// The registered name of the rooms' supervisor.
    rooms: String,
    /// Rooms opened so far.
    opened: u64,
    /// The configuration's `motd`, as last read.
    motd: String,
}

/// Init argument: `{"rooms": "rooms"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Start {
    rooms: String,
}

/// What the lobby reads of the application's configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Config {
    motd: String,
    refuse_changes: bool,
}

/// A room's arguments, given over the template's.
#[derive(Serialize, Deserialize)]
pub struct RoomArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
}

/// Requests.
#[derive(Deserialize)]
pub enum Request {
    /// Opens a room.
    Open(RoomArgs),
    /// Closes the room running as this pid.
    Close(Pid),
    /// Rooms opened so far.
    Opened,
    /// The configuration's `motd`.
    Motd,
}

/// Replies.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// A pid.
    Pid(Pid),
    /// A number.
    Number(u64),
    /// A text.
    Text(String),
    /// Done.
    Unit(()),
    /// What went wrong.
    Error {
        /// Why.
        error: String,
    },
}

/// The supervisor's call that starts a child from its template.
#[derive(Serialize)]
struct StartChild<'a> {
    start_child: &'a RoomArgs,
}

/// Its answer.
#[derive(Deserialize)]
struct Started {
    pid: Pid,
}

/// The supervisor's call that stops a child.
#[derive(Serialize)]
struct TerminateChild {
    terminate_child: Pid,
}

impl Behaviour for Lobby {
    type Init = Start;
    type Call = Request;
    type Reply = Reply;
    type Cast = ();
    type Info = ();

    fn init(start: Start, ctx: &mut Ctx<'_>) -> Result<Self, Error> {
        let config: Config = ctx.config()?;
        Ok(Lobby { rooms: start.rooms, opened: 0, motd: config.motd })
    }

    fn handle_call(&mut self, request: Request, ctx: &mut Ctx<'_>) -> Reply {
        let failed = |e: Error| Reply::Error { error: e.message().to_string() };
        match request {
            Request::Open(args) => {
                match ctx.call_named::<_, Started>(
                    &self.rooms,
                    &StartChild { start_child: &args },
                    ROOMS_TIMEOUT,
                ) {
                    Ok(started) => {
                        self.opened += 1;
                        Reply::Pid(started.pid)
                    }
                    Err(e) => failed(e),
                }
            }
            Request::Close(pid) => {
                match ctx.call_named::<_, ()>(
                    &self.rooms,
                    &TerminateChild { terminate_child: pid },
                    ROOMS_TIMEOUT,
                ) {
                    Ok(()) => Reply::Unit(()),
                    Err(e) => failed(e),
                }
            }
            Request::Opened => Reply::Number(self.opened),
            Request::Motd => Reply::Text(self.motd.clone()),
        }
    }

    fn config_change(&mut self, change: ConfigChange, _ctx: &mut Ctx<'_>) -> Result<(), Error> {
        let config: Config = change.new_config()?;
        if config.refuse_changes {
            return Err(Error::new("the new configuration has refuse_changes = true"));
        }
        self.motd = config.motd;
        Ok(())
    }
}

relive_abi::export_module!(Lobby, name = "lobby");
