//! The probe: one call per ABI 3 service, and a log of what reached
//! `handle_info` and `config_change`, each entry stamped with the version
//! that handled it. Shared by abi3-probe-v1 and abi3-probe-v2 (the same
//! code at two versions), so tests can move a process between them and see
//! which version saw what.

use std::time::Duration;

use relive_abi::prelude::*;

/// The version of the crate this file is built into.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The configuration the probe reads (every field optional).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProbeConfig {
    /// Any text.
    pub greeting: String,
    /// Any number.
    pub limit: u64,
}

/// What the probe saw, and which version saw it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Event {
    /// A trapped exit.
    Exit { from: Pid, reason: String, seen_by: String },
    /// A monitor fired.
    Down { monitor: MonitorRef, pid: Pid, reason: String, seen_by: String },
    /// Bytes on a port it owns.
    Data { port: PortId, text: String, seen_by: String },
    /// A port it owns closed.
    Closed { port: PortId, reason: String, seen_by: String },
    /// A listener it owns accepted a connection.
    Accepted { listener: PortId, port: PortId, seen_by: String },
    /// The node's configuration changed; `read` is what `Ctx::config`
    /// returned during the callback.
    Config { old: ProbeConfig, new: ProbeConfig, read: ProbeConfig, seen_by: String },
}

/// The probe's state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Probe {
    events: Vec<Event>,
    /// Deferred calls not answered yet, oldest first.
    deferred: Vec<ReplyToken>,
    /// Tokens already used, to try them again.
    answered: Vec<ReplyToken>,
    /// `Some("panic")` makes config_change panic; any other text makes it
    /// return that error.
    refuse_config: Option<String>,
}

/// Calls: one per service.
#[derive(Debug, Serialize, Deserialize)]
pub enum Call {
    Version,
    Pid,
    Link(Pid),
    Unlink(Pid),
    Monitor(Pid),
    Demonitor(MonitorRef),
    TrapExit(bool),
    Register(String),
    Unregister(String),
    Whereis(String),
    Exit {
        pid: Pid,
        reason: String,
    },
    /// Stops this process with the reason once the call returns.
    Stop(String),
    Events,
    /// Defers the call; what handle_call returns (`Dropped`) must never
    /// reach the caller.
    Defer,
    /// Defers the call and answers it from a timer after `ms`.
    DeferForTimer {
        ms: u64,
        value: u64,
    },
    /// Defers the call and answers it at once, in the same handle_call.
    DeferAndAnswer(u64),
    /// Defers twice: the second attempt's error.
    DeferTwice,
    /// Answers the oldest deferred call with `value`.
    Answer(u64),
    /// Uses the last token used again.
    AnswerAgain(u64),
    /// Uses a token naming another process.
    AnswerForeign {
        pid: Pid,
        value: u64,
    },
    /// Deferred calls not answered yet (as this state keeps them).
    Pending,
    /// Calls another probe.
    AskOther {
        pid: Pid,
        request: Box<Call>,
        timeout_ms: u64,
    },
    Connect {
        addr: String,
        timeout_ms: u64,
    },
    Listen(String),
    /// Listens with options (`Ctx::listen_with`).
    ListenWith {
        addr: String,
        max_connections: Option<u32>,
        refusal: Option<String>,
        idle_timeout_ms: Option<u64>,
    },
    PortSend {
        port: PortId,
        text: String,
    },
    GiveAway {
        port: PortId,
        to: Pid,
    },
    Config,
    /// See [`Probe::refuse_config`].
    RefuseConfig(Option<String>),
}

/// Casts.
#[derive(Debug, Serialize, Deserialize)]
pub enum Cast {
    /// Answers the oldest deferred call with `value`, from a cast.
    Answer(u64),
}

/// Plain messages.
#[derive(Debug, Serialize, Deserialize)]
pub enum Message {
    /// Answers the oldest deferred call with `value`, from `handle_info`.
    Answer(u64),
}

/// Replies.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Text(String),
    Unit,
    Bool(bool),
    Pid(Pid),
    MaybePid(Option<Pid>),
    Monitor(MonitorRef),
    Events(Vec<Event>),
    Done(Result<(), String>),
    Port(Result<PortId, String>),
    Listening(Result<(PortId, String), String>),
    Config(Result<ProbeConfig, String>),
    Count(u64),
    /// A deferred call's answer: the value and the version that sent it.
    Answered {
        value: u64,
        by: String,
    },
    /// What handle_call returns for a deferred call (dropped by the node).
    Dropped,
    Called(Result<Box<Reply>, String>),
}

impl Probe {
    fn answer(&mut self, value: u64, ctx: &mut Ctx<'_>) -> Result<(), String> {
        if self.deferred.is_empty() {
            return Err("no deferred call".into());
        }
        let token = self.deferred.remove(0);
        self.answered.push(token.clone());
        ctx.reply(token, &Reply::Answered { value, by: VERSION.into() }).map_err(|e| e.to_string())
    }
}

impl Behaviour for Probe {
    type Init = ();
    type Call = Call;
    type Reply = Reply;
    type Cast = Cast;
    type Info = Message;

    fn init(_arg: (), _ctx: &mut Ctx<'_>) -> Result<Self, Error> {
        Ok(Probe::default())
    }

    fn handle_call(&mut self, request: Call, ctx: &mut Ctx<'_>) -> Reply {
        match request {
            Call::Version => Reply::Text(VERSION.into()),
            Call::Pid => Reply::Pid(ctx.pid()),
            Call::Link(pid) => Reply::Done(ctx.link(pid).map_err(|e| e.to_string())),
            Call::Unlink(pid) => {
                ctx.unlink(pid);
                Reply::Unit
            }
            Call::Monitor(pid) => Reply::Monitor(ctx.monitor(pid)),
            Call::Demonitor(monitor) => Reply::Bool(ctx.demonitor(monitor)),
            Call::TrapExit(on) => Reply::Bool(ctx.trap_exit(on)),
            Call::Register(name) => Reply::Done(ctx.register(&name).map_err(|e| e.to_string())),
            Call::Unregister(name) => Reply::Bool(ctx.unregister(&name)),
            Call::Whereis(name) => Reply::MaybePid(ctx.whereis(&name)),
            Call::Exit { pid, reason } => {
                ctx.exit(pid, &reason);
                Reply::Unit
            }
            Call::Stop(reason) => {
                ctx.stop(&reason);
                Reply::Unit
            }
            Call::Events => Reply::Events(self.events.clone()),
            Call::Defer => match ctx.defer_reply() {
                Ok(token) => {
                    self.deferred.push(token);
                    Reply::Dropped
                }
                Err(e) => Reply::Text(e.to_string()),
            },
            Call::DeferForTimer { ms, value } => match ctx.defer_reply() {
                Ok(token) => {
                    self.deferred.push(token);
                    let me = ctx.pid();
                    match ctx.send_after(me, &Message::Answer(value), Duration::from_millis(ms)) {
                        Ok(_) => Reply::Dropped,
                        Err(e) => Reply::Text(e.to_string()),
                    }
                }
                Err(e) => Reply::Text(e.to_string()),
            },
            Call::DeferAndAnswer(value) => match ctx.defer_reply() {
                Ok(token) => {
                    self.deferred.push(token);
                    match self.answer(value, ctx) {
                        Ok(()) => Reply::Dropped,
                        Err(e) => Reply::Text(e),
                    }
                }
                Err(e) => Reply::Text(e.to_string()),
            },
            Call::DeferTwice => {
                let first = ctx.defer_reply();
                let second = ctx.defer_reply();
                if let Ok(token) = first {
                    // Answered at once so the caller gets the second error.
                    let _ = ctx.reply(token, &Reply::Done(second.map(drop).map_err(|e| e.to_string())));
                }
                Reply::Dropped
            }
            Call::Answer(value) => Reply::Done(self.answer(value, ctx)),
            Call::AnswerAgain(value) => match self.answered.last().cloned() {
                Some(token) => Reply::Done(
                    ctx.reply(token, &Reply::Answered { value, by: VERSION.into() })
                        .map_err(|e| e.to_string()),
                ),
                None => Reply::Done(Err("no token was used yet".into())),
            },
            Call::AnswerForeign { pid, value } => {
                // A token as another process would hold it: the same shape,
                // serialized, with its pid.
                let mine = match ctx.defer_reply() {
                    Ok(token) => token,
                    Err(e) => return Reply::Text(e.to_string()),
                };
                let foreign = forge(&mine, pid);
                let refused = ctx.reply(foreign, &Reply::Answered { value, by: VERSION.into() });
                let _ = ctx.reply(mine, &Reply::Done(refused.map_err(|e| e.to_string())));
                Reply::Dropped
            }
            Call::Pending => Reply::Count(self.deferred.len() as u64),
            Call::AskOther { pid, request, timeout_ms } => Reply::Called(
                ctx.call::<Call, Reply>(pid, &request, Duration::from_millis(timeout_ms))
                    .map(Box::new)
                    .map_err(|e| e.to_string()),
            ),
            Call::Connect { addr, timeout_ms } => {
                Reply::Port(ctx.connect(&addr, Duration::from_millis(timeout_ms)).map_err(|e| e.to_string()))
            }
            Call::Listen(addr) => Reply::Listening(ctx.listen_at(&addr).map_err(|e| e.to_string())),
            Call::ListenWith { addr, max_connections, refusal, idle_timeout_ms } => {
                let options = ListenOptions {
                    max_connections,
                    refusal: refusal.map(String::into_bytes),
                    idle_timeout: idle_timeout_ms.map(Duration::from_millis),
                    ..ListenOptions::default()
                };
                Reply::Listening(ctx.listen_with(&addr, &options).map_err(|e| e.to_string()))
            }
            Call::PortSend { port, text } => {
                Reply::Done(ctx.port_send(port, text.as_bytes()).map_err(|e| e.to_string()))
            }
            Call::GiveAway { port, to } => {
                Reply::Done(ctx.port_set_owner(port, to).map_err(|e| e.to_string()))
            }
            Call::Config => Reply::Config(ctx.config::<ProbeConfig>().map_err(|e| e.to_string())),
            Call::RefuseConfig(how) => {
                self.refuse_config = how;
                Reply::Unit
            }
        }
    }

    fn handle_cast(&mut self, message: Cast, ctx: &mut Ctx<'_>) {
        match message {
            Cast::Answer(value) => {
                if let Err(e) = self.answer(value, ctx) {
                    ctx.log(LogLevel::Warn, &e);
                }
            }
        }
    }

    fn handle_info(&mut self, info: Info<Message>, ctx: &mut Ctx<'_>) {
        let seen_by = VERSION.to_string();
        let event = match info {
            Info::Message(Message::Answer(value)) => {
                if let Err(e) = self.answer(value, ctx) {
                    ctx.log(LogLevel::Warn, &e);
                }
                return;
            }
            Info::Exit { from, reason } => Event::Exit { from, reason, seen_by },
            Info::Down { monitor, pid, reason } => Event::Down { monitor, pid, reason, seen_by },
            Info::Port(PortEvent::Data { port, bytes }) => {
                Event::Data { port, text: String::from_utf8_lossy(&bytes).into_owned(), seen_by }
            }
            Info::Port(PortEvent::Closed { port, reason }) => Event::Closed { port, reason, seen_by },
            Info::Port(PortEvent::Accepted { listener, port, .. }) => {
                Event::Accepted { listener, port, seen_by }
            }
        };
        self.events.push(event);
    }

    fn config_change(&mut self, change: ConfigChange, ctx: &mut Ctx<'_>) -> Result<(), Error> {
        match self.refuse_config.as_deref() {
            Some("panic") => panic!("the probe panics on a configuration change, as asked"),
            Some(text) => return Err(Error::new(text)),
            None => {}
        }
        let event = Event::Config {
            old: change.old_config()?,
            new: change.new_config()?,
            read: ctx.config()?,
            seen_by: VERSION.into(),
        };
        self.events.push(event);
        Ok(())
    }
}

/// `token` as if process `pid` had deferred it (through its serialized
/// form, the way a token kept in a state comes back).
fn forge(token: &ReplyToken, pid: Pid) -> ReplyToken {
    #[derive(Serialize, Deserialize)]
    struct Shape {
        pid: Pid,
        id: u64,
    }
    let bytes = StateBytes::encode(token).expect("a token encodes");
    let mut shape: Shape = bytes.decode().expect("a token has this shape");
    shape.pid = pid;
    StateBytes::encode(&shape).and_then(|b| b.decode()).expect("the shape is a token")
}
