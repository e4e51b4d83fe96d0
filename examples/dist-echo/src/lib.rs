//! dist_echo: a module process that other nodes reach over Erlang
//! distribution (tests/dist.rs). From Erlang:
//!
//! ```erlang
//! gen_server:call({dist_echo, 'relive@host'}, {echo, <<"hi">>})  %% <<"hi">>
//! gen_server:call({dist_echo, 'relive@host'}, whoami)            %% its pid
//! {dist_echo, 'relive@host'} ! {bounce, Name, Node, <<"text">>}  %% {Name, Node} gets {reply, <<"text">>}
//! ```
//!
//! Erlang tagged tuples arrive as the enum variants below (snake_case),
//! `{reply, Text}` from anyone is kept and listed by `replies`.

use relive_abi::prelude::*;

/// The state: the replies received, oldest first.
#[derive(Serialize, Deserialize, Default)]
pub struct Echo {
    replies: Vec<String>,
}

/// Calls.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Answers the text.
    Echo(String),
    /// Answers this process's pid, as an Erlang pid.
    Whoami,
    /// Sends `{bounce, <<"dist_echo">>, ReplyNode, Text}` to `{Name, Node}`:
    /// whoever gets it answers `{reply, Text}` to `{dist_echo, ReplyNode}`.
    Ask {
        /// The registered name there.
        name: String,
        /// The node there.
        node: String,
        /// This node's name (a module does not know it).
        reply_node: String,
        /// The text.
        text: String,
    },
    /// The replies received so far.
    Replies,
    /// Monitors the pid and keeps the down reasons in `replies`.
    Monitor(#[serde(with = "relive_abi::erlang_pid")] Pid),
    /// Links to the pid (and traps exits: exits arrive in `replies`).
    Link(#[serde(with = "relive_abi::erlang_pid")] Pid),
    /// Unlinks from the pid.
    Unlink(#[serde(with = "relive_abi::erlang_pid")] Pid),
    /// Stops with this reason (after replying).
    Stop(String),
    /// Calls another node's process with the text (a gen_server call on the
    /// wire) and answers what `{ok, Text}` carried.
    CallPid(#[serde(with = "relive_abi::erlang_pid")] Pid, String),
}

/// What a called Erlang process answers: `{ok, Text}`.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Ok(String),
}

/// Replies.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// Text.
    Text(String),
    /// A pid (an Erlang pid on the wire).
    Pid(#[serde(with = "relive_abi::erlang_pid")] Pid),
    /// The replies.
    Replies(Vec<String>),
    /// Done.
    Ok(bool),
}

/// Plain messages.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Info {
    /// `{bounce, Name, Node, Text}`: answer `{reply, Text}` to {Name, Node}.
    Bounce(String, String, String),
    /// `{reply, Text}`: kept.
    Reply(String),
}

/// The message `Ask` sends (an enum, so it crosses as a tagged tuple's
/// map form `#{<<"bounce">> => [...]}` and reads back as [`Info::Bounce`]
/// on a relive node).
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum Out {
    Bounce(String, String, String),
    Reply(String),
}

impl Behaviour for Echo {
    type Init = ();
    type Call = Request;
    type Reply = Reply;
    type Cast = Info;
    type Info = Info;

    fn init(_: (), _ctx: &mut Ctx<'_>) -> Result<Self, Error> {
        Ok(Echo::default())
    }

    fn handle_call(&mut self, request: Request, ctx: &mut Ctx<'_>) -> Reply {
        match request {
            Request::Echo(text) => Reply::Text(text),
            Request::Whoami => Reply::Pid(ctx.pid()),
            Request::Ask { name, node, reply_node, text } => {
                let sent = ctx.send_remote(&name, &node, &Out::Bounce("dist_echo".into(), reply_node, text));
                Reply::Ok(sent.is_ok())
            }
            Request::Replies => Reply::Replies(self.replies.clone()),
            Request::Monitor(pid) => {
                ctx.monitor(pid);
                Reply::Ok(true)
            }
            Request::Link(pid) => {
                ctx.trap_exit(true);
                Reply::Ok(ctx.link(pid).is_ok())
            }
            Request::Unlink(pid) => {
                ctx.unlink(pid);
                Reply::Ok(true)
            }
            Request::Stop(reason) => {
                ctx.stop(&reason);
                Reply::Ok(true)
            }
            Request::CallPid(pid, text) => {
                match ctx.call::<String, Answer>(pid, &text, std::time::Duration::from_secs(10)) {
                    Ok(Answer::Ok(text)) => Reply::Text(text),
                    Err(error) => Reply::Text(format!("error: {error}")),
                }
            }
        }
    }

    fn handle_cast(&mut self, message: Info, ctx: &mut Ctx<'_>) {
        self.handle_info(relive_abi::Info::Message(message), ctx);
    }

    fn handle_info(&mut self, info: relive_abi::Info<Info>, ctx: &mut Ctx<'_>) {
        match info {
            relive_abi::Info::Message(Info::Bounce(name, node, text)) => {
                let _ = ctx.send_remote(&name, &node, &Out::Reply(text));
            }
            relive_abi::Info::Message(Info::Reply(text)) => self.replies.push(text),
            relive_abi::Info::Down { reason, .. } => self.replies.push(format!("down {reason}")),
            relive_abi::Info::Exit { reason, .. } => self.replies.push(format!("exit {reason}")),
            relive_abi::Info::Port(_) => {}
        }
    }
}

relive_abi::export_module!(Echo, name = "dist_echo");
