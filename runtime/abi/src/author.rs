//! The module author's side: [`Behaviour`], [`Ctx`] and their values.

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ffi::{HostCtx, OutBuf, RBytes, RStr, SEND_CAST, SEND_INFO, Status};

/// A port (a TCP listener or connection the node holds) as a module sees it:
/// the node's port number. The runtime owns the socket; the process that
/// owns the port gets its events as [`Info::Port`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortId(pub u64);

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#Port<0.{}>", self.0)
    }
}

/// What a port tells its owning process ([`Info::Port`]); crosses the ABI
/// as MessagePack ([`crate::INFO_PORT`]), except `Data`, whose bytes cross
/// as they were read and are copied once
/// ([`crate::ModuleVtable::handle_port_data`]).
///
/// Events of one connection arrive in the order the bytes did: its
/// `Accepted` (to the listener's owner, which owns the connection too),
/// any `Data`, then one `Closed` unless the program closed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PortEvent {
    /// A listener accepted a connection, now owned by this process.
    Accepted {
        /// The listener.
        listener: PortId,
        /// The new connection.
        port: PortId,
        /// The peer's address (`ip:port`).
        peer: String,
    },
    /// Bytes arrived, as one read returned them: a request may be split
    /// across events, and one event may hold many requests.
    Data {
        /// The connection.
        port: PortId,
        /// The bytes.
        #[serde(with = "crate::bytes")]
        bytes: Vec<u8>,
    },
    /// The connection closed by itself (the peer closed it, or an I/O
    /// error); the port is gone.
    Closed {
        /// The connection.
        port: PortId,
        /// Why, as text.
        reason: String,
    },
}

/// Limits of a listener and of each connection it accepts
/// ([`Ctx::listen_with`]). Every option is optional: `None` keeps the
/// node's default. Build it with `..ListenOptions::default()` so that code
/// keeps compiling when options are added:
///
/// ```
/// # use relive_abi::ListenOptions;
/// # use std::time::Duration;
/// let opts = ListenOptions {
///     max_connections: Some(10_000),
///     refusal: Some(b"-ERR max number of clients reached\r\n".to_vec()),
///     idle_timeout: Some(Duration::from_secs(300)),
///     ..ListenOptions::default()
/// };
/// ```
///
/// The options cross the ABI as MessagePack with only the options that are
/// set ([`crate::HostVtable::listen_with`]); a node that does not know one
/// of them refuses the listen with an error naming it rather than ignoring
/// a limit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenOptions {
    /// Connections of this listener open at once (at least 1); a client
    /// over it is sent [`ListenOptions::refusal`] and closed, as Redis's
    /// `maxclients`. The node's own cap applies as well. `None`: no cap of
    /// the listener's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Written to a client refused for a cap before its close, e.g.
    /// `-ERR max number of clients reached\r\n`. `None`: closed without a
    /// word.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "some_bytes")]
    pub refusal: Option<Vec<u8>>,
    /// A connection with no bytes read or written for this long closes,
    /// and its owner gets [`PortEvent::Closed`] with a reason starting
    /// `idle timeout` (Redis's `timeout`). `None`: never (the default).
    /// Crosses as whole milliseconds, rounded up.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "idle_timeout_ms",
        with = "some_millis"
    )]
    pub idle_timeout: Option<Duration>,
    /// Output bytes of a connection that may wait unsent for a peer that
    /// does not read before the connection stops reading; twice this closes
    /// it. `None`: the node's default (512 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_buffered_bytes: Option<u64>,
    /// Bytes of a connection delivered to this process and not yet handled
    /// before the connection stops reading (backpressure). `None`: the
    /// node's default (4 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unhandled_bytes: Option<u64>,
}

/// `Option<Vec<u8>>` as MessagePack `bin` (see [`bytes`]).
mod some_bytes {
    use serde::de::Deserializer;
    use serde::ser::Serializer;

    pub(super) fn serialize<S: Serializer>(
        bytes: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_bytes(bytes),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        crate::bytes::deserialize(deserializer).map(Some)
    }
}

/// `Option<Duration>` as whole milliseconds, rounded up (so a positive
/// duration never becomes zero).
mod some_millis {
    use std::time::Duration;

    use serde::de::{Deserialize, Deserializer};
    use serde::ser::Serializer;

    pub(super) fn serialize<S: Serializer>(
        duration: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            Some(duration) => {
                let millis = duration.as_nanos().div_ceil(1_000_000);
                serializer.serialize_u64(u64::try_from(millis).unwrap_or(u64::MAX))
            }
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        u64::deserialize(deserializer).map(|ms| Some(Duration::from_millis(ms)))
    }
}

/// A process id as a module sees it (the node's 64-bit pid).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pid(pub u64);

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<0.{}.{}>", self.0 as u32, self.0 >> 32)
    }
}

/// A pending timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TimerRef(pub u64);

/// A monitor this process holds ([`Ctx::monitor`]); the [`Info::Down`] it
/// fires carries it. Plain data: keep it in the state, across upgrades too
/// (the node keeps the monitor itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MonitorRef {
    pub(crate) id: u64,
    pub(crate) pid: Pid,
}

impl MonitorRef {
    /// The monitored process.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The node's number for this monitor.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl fmt::Display for MonitorRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#Ref<{}>", self.id)
    }
}

/// The right to answer one call later ([`Ctx::defer_reply`], then
/// [`Ctx::reply`]). Plain data that survives an upgrade: keep it in the
/// state and the next version can answer the call. The node holds the
/// caller's reply handle with the process, not with the code, so a token
/// is only good in the process that deferred the call, and only once. Not
/// `Copy`, so that answering twice takes a deliberate clone.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ReplyToken {
    pid: Pid,
    id: u64,
}

impl ReplyToken {
    /// The process that deferred the call (the only one that can answer it).
    pub fn pid(&self) -> Pid {
        self.pid
    }
}

impl fmt::Display for ReplyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reply token {} of {}", self.id, self.pid)
    }
}

/// The node's configuration changed ([`Behaviour::config_change`]): the
/// old and the new value, as MessagePack the author decodes into its own
/// configuration type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigChange {
    old: Vec<u8>,
    new: Vec<u8>,
}

impl ConfigChange {
    #[doc(hidden)]
    pub fn from_bytes(old: Vec<u8>, new: Vec<u8>) -> ConfigChange {
        ConfigChange { old, new }
    }

    /// The configuration before the change, decoded as `T` (see
    /// [`Ctx::config`] for how an absent configuration reads).
    pub fn old_config<T: DeserializeOwned>(&self) -> Result<T, Error> {
        decode_config(&self.old).map_err(|e| Error(format!("decoding the old configuration: {e}")))
    }

    /// The configuration after the change, decoded as `T`.
    pub fn new_config<T: DeserializeOwned>(&self) -> Result<T, Error> {
        decode_config(&self.new).map_err(|e| Error(format!("decoding the new configuration: {e}")))
    }

    /// The old configuration's MessagePack bytes.
    pub fn old_bytes(&self) -> &[u8] {
        &self.old
    }

    /// The new configuration's MessagePack bytes.
    pub fn new_bytes(&self) -> &[u8] {
        &self.new
    }
}

/// MessagePack of an empty map: what an absent configuration is.
const EMPTY_MAP: u8 = 0x80;
/// MessagePack `nil`.
const NIL: u8 = 0xc0;

/// Decodes a configuration; an empty one (no bytes, or an empty map) also
/// reads as `()` or `None`, which do not decode from a map.
fn decode_config<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    let bytes = if bytes.is_empty() { &[EMPTY_MAP][..] } else { bytes };
    match rmp_serde::from_slice(bytes) {
        Ok(value) => Ok(value),
        Err(error) if bytes == [EMPTY_MAP] => rmp_serde::from_slice(&[NIL]).map_err(|_| error),
        Err(error) => Err(error),
    }
}

/// An error a module reports: init failing, code_change refusing a state, a
/// call to another process failing. Plain text, for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Error {
        Error(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Error {
        Error(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Error {
        Error(message.to_string())
    }
}

/// A state as bytes (MessagePack): what one version hands the next in an
/// upgrade, or an older one in a downgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateBytes(pub Vec<u8>);

impl StateBytes {
    /// Encodes a state (as a map with field names, so versions that add,
    /// remove or reorder fields can still read each other).
    pub fn encode<T: Serialize>(state: &T) -> Result<StateBytes, Error> {
        rmp_serde::to_vec_named(state).map(StateBytes).map_err(|e| Error(format!("encoding state: {e}")))
    }

    /// Decodes a state.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        rmp_serde::from_slice(&self.0).map_err(|e| Error(format!("decoding state: {e}")))
    }
}

/// The `extra` argument of an upgrade instruction (MessagePack; empty when
/// the plan gives none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extra(pub Vec<u8>);

impl Extra {
    /// Decodes it; `None` if there is none.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<Option<T>, Error> {
        if self.0.is_empty() {
            return Ok(None);
        }
        rmp_serde::from_slice(&self.0).map(Some).map_err(|e| Error(format!("decoding extra: {e}")))
    }
}

/// A plain message as `handle_info` gets it.
#[derive(Debug)]
pub enum Info<T> {
    /// A message of the module's own `Info` type.
    Message(T),
    /// A linked process exited (the process traps exits).
    Exit {
        /// Who exited.
        from: Pid,
        /// Why, as text.
        reason: String,
    },
    /// A monitored process exited (or was not alive when monitored:
    /// reason `"noproc"`).
    Down {
        /// The monitor that fired ([`Ctx::monitor`] returned it).
        monitor: MonitorRef,
        /// Who exited.
        pid: Pid,
        /// Why, as text.
        reason: String,
    },
    /// An event of a port this process owns (see [`Ctx::listen`]).
    Port(PortEvent),
}

/// Log levels of [`Ctx::log`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// Something failed.
    Error = 0,
    /// Something is off.
    Warn = 1,
    /// Worth knowing.
    Info = 2,
    /// For debugging.
    Debug = 3,
}

/// The code of a module: its state type and callbacks, gen_server style.
///
/// Messages, replies and states are MessagePack; a message that does not
/// decode as the expected type is refused (a call gets an error, a cast or
/// plain message is logged and dropped) without reaching the callback.
pub trait Behaviour: Serialize + DeserializeOwned + Send + 'static {
    /// The init argument.
    type Init: DeserializeOwned;
    /// Call requests.
    type Call: DeserializeOwned;
    /// Call replies.
    type Reply: Serialize;
    /// Casts.
    type Cast: DeserializeOwned;
    /// Plain messages.
    type Info: DeserializeOwned;

    /// Builds the state of a new process.
    fn init(arg: Self::Init, ctx: &mut Ctx<'_>) -> Result<Self, Error>;

    /// Answers a call. To answer later instead, call [`Ctx::defer_reply`]
    /// and keep the token: the value returned here is then dropped, and
    /// [`Ctx::reply`] answers the call from any later callback.
    fn handle_call(&mut self, request: Self::Call, ctx: &mut Ctx<'_>) -> Self::Reply;

    /// Handles a cast.
    fn handle_cast(&mut self, message: Self::Cast, ctx: &mut Ctx<'_>) {
        let _ = (message, ctx);
    }

    /// Handles a plain message, a trapped exit, a monitor's down message or
    /// an event of a port the process owns.
    fn handle_info(&mut self, info: Info<Self::Info>, ctx: &mut Ctx<'_>) {
        let _ = (info, ctx);
    }

    /// Upgrade: builds this version's state from `old`, the state of version
    /// `from`. The default decodes the old bytes as this type, which works
    /// when fields were only added (with `#[serde(default)]`) or removed.
    fn code_change(from: &semver::Version, old: StateBytes, extra: Extra) -> Result<Self, Error> {
        let _ = (from, extra);
        old.decode()
    }

    /// Downgrade: writes this state in the format of the older version `to`.
    /// The default encodes it as is.
    fn downgrade(&self, to: &semver::Version) -> Result<StateBytes, Error> {
        let _ = to;
        StateBytes::encode(self)
    }

    /// The node's configuration changed (OTP's `config_change`): a release
    /// upgrade brought a new `[config]`. [`Ctx::config`] already reads the
    /// new one. An error (or a panic) refuses the change: the upgrade that
    /// brought it is aborted, and the process keeps running. `ctx.stop` has
    /// no effect here and makes the change fail; return an error instead.
    /// The default accepts every change.
    fn config_change(&mut self, change: ConfigChange, ctx: &mut Ctx<'_>) -> Result<(), Error> {
        let _ = (change, ctx);
        Ok(())
    }

    /// Is this process healthy? Asked of the processes on the new code at
    /// the end of an upgrade's canary and health windows (or of the one
    /// process `relive deploy --health-process NAME` names): an error (or
    /// a panic) rolls the upgrade back, and the report quotes it. Check
    /// what the new code depends on (a connection, a derived index, an
    /// invariant of the migrated state); it runs between two of the
    /// process's messages, so keep it quick and leave the state as it is.
    /// The default is healthy.
    fn health(&self, ctx: &mut Ctx<'_>) -> Result<(), Error> {
        let _ = ctx;
        Ok(())
    }
}

/// The node, as a callback sees it.
pub struct Ctx<'a> {
    host: &'a HostCtx,
}

impl<'a> Ctx<'a> {
    #[doc(hidden)]
    pub fn from_host(host: &'a HostCtx) -> Ctx<'a> {
        Ctx { host }
    }

    fn vtable(&self) -> &crate::ffi::HostVtable {
        // SAFETY: the node passes a valid HostVtable for every call and keeps
        // it alive (it is static in the node).
        unsafe { &*self.host.vtable }
    }

    /// This process's pid.
    pub fn pid(&self) -> Pid {
        // SAFETY: host function with the host handle of this call.
        Pid(unsafe { (self.vtable().self_pid)(self.host.host) })
    }

    fn send_kind<T: Serialize>(&mut self, to: Pid, kind: u32, message: &T) -> Result<(), Error> {
        let bytes = encode(message)?;
        // SAFETY: host function with this call's host handle; bytes live
        // across the call.
        let status = unsafe { (self.vtable().send)(self.host.host, to.0, kind, RBytes::from_slice(&bytes)) };
        match Status::from_u32(status) {
            Status::Ok => Ok(()),
            _ => Err(Error(format!("no process {to}: the message was dropped"))),
        }
    }

    /// Sends a plain message (handled by `handle_info`).
    pub fn send<T: Serialize>(&mut self, to: Pid, message: &T) -> Result<(), Error> {
        self.send_kind(to, SEND_INFO, message)
    }

    /// Sends a cast (handled by `handle_cast`).
    pub fn cast<T: Serialize>(&mut self, to: Pid, message: &T) -> Result<(), Error> {
        self.send_kind(to, SEND_CAST, message)
    }

    /// Casts to a registered name.
    pub fn cast_named<T: Serialize>(&mut self, name: &str, message: &T) -> Result<(), Error> {
        let bytes = encode(message)?;
        // SAFETY: host function with this call's host handle.
        let status = unsafe {
            (self.vtable().send_named)(self.host.host, RStr::new(name), SEND_CAST, RBytes::from_slice(&bytes))
        };
        match Status::from_u32(status) {
            Status::Ok => Ok(()),
            _ => Err(Error(format!("no process registered as {name:?}"))),
        }
    }

    /// Calls a process and waits for its reply.
    pub fn call<Req: Serialize, Rep: DeserializeOwned>(
        &mut self,
        to: Pid,
        request: &Req,
        timeout: Duration,
    ) -> Result<Rep, Error> {
        self.call_inner(to.0, "", request, timeout)
    }

    /// Calls a registered process and waits for its reply.
    pub fn call_named<Req: Serialize, Rep: DeserializeOwned>(
        &mut self,
        name: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Rep, Error> {
        self.call_inner(0, name, request, timeout)
    }

    fn call_inner<Req: Serialize, Rep: DeserializeOwned>(
        &mut self,
        to: u64,
        name: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Rep, Error> {
        let bytes = encode(request)?;
        let mut reply = Vec::new();
        let mut out = OutBuf::for_vec(&mut reply);
        // SAFETY: host function with this call's host handle; `out` writes
        // into `reply`, alive across the call.
        let status = unsafe {
            (self.vtable().call)(
                self.host.host,
                to,
                RStr::new(name),
                RBytes::from_slice(&bytes),
                timeout.as_millis().min(u64::MAX as u128) as u64,
                &mut out,
            )
        };
        match Status::from_u32(status) {
            Status::Ok => {
                rmp_serde::from_slice(&reply).map_err(|e| Error(format!("decoding the reply: {e}")))
            }
            _ => Err(Error(String::from_utf8_lossy(&reply).into_owned())),
        }
    }

    /// Spawns a process running the current version of `module`.
    pub fn spawn<T: Serialize>(&mut self, module: &str, arg: &T) -> Result<Pid, Error> {
        self.spawn_inner(module, arg, false)
    }

    /// Spawns a process running `module`, linked to this one.
    pub fn spawn_link<T: Serialize>(&mut self, module: &str, arg: &T) -> Result<Pid, Error> {
        self.spawn_inner(module, arg, true)
    }

    fn spawn_inner<T: Serialize>(&mut self, module: &str, arg: &T, link: bool) -> Result<Pid, Error> {
        let bytes = encode(arg)?;
        let mut pid = 0u64;
        let mut error = Vec::new();
        let mut out = OutBuf::for_vec(&mut error);
        // SAFETY: host function with this call's host handle; `pid` and
        // `out` are valid for writes across the call.
        let status = unsafe {
            (self.vtable().spawn)(
                self.host.host,
                RStr::new(module),
                RBytes::from_slice(&bytes),
                u32::from(link),
                &mut pid,
                &mut out,
            )
        };
        match Status::from_u32(status) {
            Status::Ok => Ok(Pid(pid)),
            _ => Err(Error(String::from_utf8_lossy(&error).into_owned())),
        }
    }

    /// Delivers `message` to `to` as a plain message after `delay`.
    pub fn send_after<T: Serialize>(
        &mut self,
        to: Pid,
        message: &T,
        delay: Duration,
    ) -> Result<TimerRef, Error> {
        let bytes = encode(message)?;
        // SAFETY: host function with this call's host handle.
        let timer = unsafe {
            (self.vtable().send_after)(
                self.host.host,
                to.0,
                RBytes::from_slice(&bytes),
                delay.as_millis().min(u64::MAX as u128) as u64,
            )
        };
        Ok(TimerRef(timer))
    }

    /// Cancels a timer; true if it had not fired.
    pub fn cancel_timer(&mut self, timer: TimerRef) -> bool {
        // SAFETY: host function with this call's host handle.
        unsafe { (self.vtable().cancel_timer)(self.host.host, timer.0) != 0 }
    }

    /// Logs through the node's logger.
    pub fn log(&mut self, level: LogLevel, message: &str) {
        // SAFETY: host function with this call's host handle.
        unsafe { (self.vtable().log)(self.host.host, level as u32, RStr::new(message)) }
    }

    /// Ends this process with `reason` once the callback returns: `"normal"`,
    /// `"shutdown"`, or any text for a failure.
    pub fn stop(&mut self, reason: &str) {
        // SAFETY: host function with this call's host handle.
        unsafe { (self.vtable().stop)(self.host.host, RStr::new(reason)) }
    }
}

/// The release's supervisors, by their registered names (`[[supervisor]]`
/// in release.toml). Built on [`Ctx::call_named`]: every supervisor answers
/// `{"start_child": ARGS}`, `{"terminate_child": PID}` and
/// `"which_children"` as MessagePack calls.
impl Ctx<'_> {
    /// Starts a child of the simple_one_for_one supervisor `supervisor`
    /// from its template (the one `[[process]]` under it), with `args`
    /// merged over the template's `args` (when both are tables, `args`'
    /// keys win; otherwise `args` replaces them). The child's `init` has
    /// run when this returns, and the supervisor restarts it as its
    /// `restart` says.
    ///
    /// # Errors
    /// No such supervisor, it is not simple_one_for_one, the child's init
    /// failed (its reason), or no answer within `timeout`.
    pub fn start_child<A: Serialize>(
        &mut self,
        supervisor: &str,
        args: &A,
        timeout: Duration,
    ) -> Result<Pid, Error> {
        #[derive(Serialize)]
        struct StartChild<'a, A> {
            start_child: &'a A,
        }
        #[derive(Deserialize)]
        struct Started {
            pid: u64,
        }
        let started: Started = self.call_named(supervisor, &StartChild { start_child: args }, timeout)?;
        Ok(Pid(started.pid))
    }

    /// Stops `child`, a child of `supervisor`, as its `shutdown` says.
    ///
    /// # Errors
    /// No such supervisor or child, or no answer within `timeout`.
    pub fn terminate_child(&mut self, supervisor: &str, child: Pid, timeout: Duration) -> Result<(), Error> {
        #[derive(Serialize)]
        struct TerminateChild {
            terminate_child: u64,
        }
        self.call_named::<_, ()>(supervisor, &TerminateChild { terminate_child: child.0 }, timeout)
    }
}

/// Ports: TCP listeners and connections the node owns, lent to this
/// process.
impl Ctx<'_> {
    /// Listens on `addr` (`"127.0.0.1:6379"`; port 0 picks a free one).
    /// This process owns the listener and every connection it accepts, and
    /// gets their events as [`Info::Port`]: `Accepted`, then the bytes as
    /// they were read (`Data`), then `Closed`. The node owns the sockets, so
    /// connections stay open across an upgrade of this process; they close
    /// when it exits.
    pub fn listen(&mut self, addr: &str) -> Result<PortId, Error> {
        self.listen_at(addr).map(|(port, _)| port)
    }

    /// As [`Ctx::listen`], and the address the listener is bound to (with
    /// the real port when asked for port 0).
    pub fn listen_at(&mut self, addr: &str) -> Result<(PortId, String), Error> {
        let mut port = 0u64;
        let mut text = Vec::new();
        let mut out = OutBuf::for_vec(&mut text);
        // SAFETY: host function with this call's host handle; `port` and
        // `out` are valid for writes across the call.
        let status = unsafe { (self.vtable().listen)(self.host.host, RStr::new(addr), &mut port, &mut out) };
        let text = String::from_utf8_lossy(&text).into_owned();
        match Status::from_u32(status) {
            Status::Ok => Ok((PortId(port), text)),
            _ => Err(Error(text)),
        }
    }

    /// As [`Ctx::listen_at`], with limits for the listener and each
    /// connection it accepts ([`ListenOptions`]): a connection cap with the
    /// line a refused client gets, an idle timeout, and the backpressure
    /// thresholds.
    ///
    /// # Errors
    /// The address does not parse or cannot be bound, an option is out of
    /// range (`max_connections` or `idle_timeout` of zero), or the node
    /// does not know an option.
    pub fn listen_with(&mut self, addr: &str, options: &ListenOptions) -> Result<(PortId, String), Error> {
        let opts =
            rmp_serde::to_vec_named(options).map_err(|e| Error(format!("encoding listen options: {e}")))?;
        let mut port = 0u64;
        let mut text = Vec::new();
        let mut out = OutBuf::for_vec(&mut text);
        // SAFETY: host function with this call's host handle; `addr` and
        // `opts` live across the call; `port` and `out` are valid for
        // writes across it.
        let status = unsafe {
            (self.vtable().listen_with)(
                self.host.host,
                RStr::new(addr),
                RBytes::from_slice(&opts),
                &mut port,
                &mut out,
            )
        };
        let text = String::from_utf8_lossy(&text).into_owned();
        match Status::from_u32(status) {
            Status::Ok => Ok((PortId(port), text)),
            _ => Err(Error(text)),
        }
    }

    /// Replaces the options of `listener` (a listener this process owns)
    /// in place, as [`Ctx::listen_with`] would have set them: the
    /// connections it accepts from now on get them; connections open
    /// already keep theirs. A process upgraded from a version that listened
    /// with other limits applies its own this way, keeping the socket (and
    /// its clients) open.
    ///
    /// # Errors
    /// `listener` is not a listener this process owns, it is closed, an
    /// option is out of range, or the node does not know an option.
    pub fn set_listen_options(&mut self, listener: PortId, options: &ListenOptions) -> Result<(), Error> {
        let opts =
            rmp_serde::to_vec_named(options).map_err(|e| Error(format!("encoding listen options: {e}")))?;
        let mut text = Vec::new();
        let mut out = OutBuf::for_vec(&mut text);
        // SAFETY: host function with this call's host handle; `opts` lives
        // across the call; `out` is valid for writes across it.
        let status = unsafe {
            (self.vtable().listen_set_options)(
                self.host.host,
                listener.0,
                RBytes::from_slice(&opts),
                &mut out,
            )
        };
        match Status::from_u32(status) {
            Status::Ok => Ok(()),
            _ => Err(Error(String::from_utf8_lossy(&text).into_owned())),
        }
    }

    /// Queues `bytes` on connection `port`; they are written in order
    /// without blocking this process.
    pub fn port_send(&mut self, port: PortId, bytes: &[u8]) -> Result<(), Error> {
        // SAFETY: host function with this call's host handle; `bytes` lives
        // across the call.
        let status = unsafe { (self.vtable().port_send)(self.host.host, port.0, RBytes::from_slice(bytes)) };
        match Status::from_u32(status) {
            Status::Ok => Ok(()),
            _ => Err(Error(format!("cannot send on port {port}: it is closed, unknown or a listener"))),
        }
    }

    /// Closes `port` (a connection first writes out what is queued); no
    /// `Closed` event follows.
    pub fn port_close(&mut self, port: PortId) -> Result<(), Error> {
        // SAFETY: host function with this call's host handle.
        let status = unsafe { (self.vtable().port_close)(self.host.host, port.0) };
        match Status::from_u32(status) {
            Status::Ok => Ok(()),
            _ => Err(Error(format!("cannot close port {port}: it is closed or unknown"))),
        }
    }
}

/// Links, monitors, exit signals and the registry, with Erlang's rules.
impl Ctx<'_> {
    /// Links this process with `pid`, both ways: when either exits, the
    /// other gets an exit signal with its reason. A process that does not
    /// trap exits dies of any reason but `"normal"`; one that traps them
    /// ([`Ctx::trap_exit`]) gets [`Info::Exit`] instead. Links are the
    /// node's, so they hold across upgrades of either side.
    ///
    /// # Errors
    /// `pid` is not alive. As in Erlang, a `noproc` exit signal then
    /// reaches this process too: it dies of it unless it traps exits.
    pub fn link(&mut self, pid: Pid) -> Result<(), Error> {
        let mut text = Vec::new();
        let mut out = OutBuf::for_vec(&mut text);
        // SAFETY: host function with this call's host handle; `out` writes
        // into `text`, alive across the call.
        let status = unsafe { (self.vtable().link)(self.host.host, pid.0, &mut out) };
        status_text(status, text)
    }

    /// Removes the link with `pid` (both ways); nothing if there was none.
    pub fn unlink(&mut self, pid: Pid) {
        // SAFETY: host function with this call's host handle.
        unsafe { (self.vtable().unlink)(self.host.host, pid.0) }
    }

    /// Monitors `pid`: one [`Info::Down`] with this monitor arrives when it
    /// exits, at once with reason `"noproc"` if it is not alive. The node
    /// holds the monitor, so it fires whatever code either side runs then.
    pub fn monitor(&mut self, pid: Pid) -> MonitorRef {
        // SAFETY: host function with this call's host handle.
        let id = unsafe { (self.vtable().monitor)(self.host.host, pid.0) };
        MonitorRef { id, pid }
    }

    /// Removes a monitor; true if it had not fired. A `Down` already in the
    /// mailbox stays there.
    pub fn demonitor(&mut self, monitor: MonitorRef) -> bool {
        // SAFETY: host function with this call's host handle.
        unsafe { (self.vtable().demonitor)(self.host.host, monitor.id, monitor.pid.0) != 0 }
    }

    /// Turns exit trapping on or off; returns the previous setting. While
    /// on, exit signals (but `"kill"`) arrive as [`Info::Exit`] instead of
    /// ending the process. The setting belongs to the process and holds
    /// across upgrades.
    pub fn trap_exit(&mut self, on: bool) -> bool {
        // SAFETY: host function with this call's host handle.
        unsafe { (self.vtable().trap_exit)(self.host.host, u32::from(on)) != 0 }
    }

    /// Sends an exit signal with `reason` to `pid`, as Erlang's `exit/2`:
    /// `"kill"` ends it whatever it does (its links see `"killed"`),
    /// `"normal"` is ignored unless it traps exits, and any other reason
    /// ends it unless it traps exits (then it gets [`Info::Exit`]). Nothing
    /// happens if `pid` is not alive.
    pub fn exit(&mut self, pid: Pid, reason: &str) {
        // SAFETY: host function with this call's host handle.
        unsafe { (self.vtable().exit)(self.host.host, pid.0, RStr::new(reason)) }
    }

    /// Registers this process as `name` ([`Ctx::cast_named`],
    /// [`Ctx::call_named`] reach it). The name goes when the process exits.
    ///
    /// # Errors
    /// The name is taken, or this process already has a name.
    pub fn register(&mut self, name: &str) -> Result<(), Error> {
        let mut text = Vec::new();
        let mut out = OutBuf::for_vec(&mut text);
        // SAFETY: host function with this call's host handle; `out` writes
        // into `text`, alive across the call.
        let status = unsafe { (self.vtable().register)(self.host.host, RStr::new(name), &mut out) };
        status_text(status, text)
    }

    /// Removes a registered name, whoever holds it; true if it was
    /// registered.
    pub fn unregister(&mut self, name: &str) -> bool {
        // SAFETY: host function with this call's host handle.
        unsafe { (self.vtable().unregister)(self.host.host, RStr::new(name)) != 0 }
    }

    /// The process registered as `name`, if any.
    pub fn whereis(&self, name: &str) -> Option<Pid> {
        let mut pid = 0u64;
        // SAFETY: host function with this call's host handle; `pid` is valid
        // for writes across the call.
        let found = unsafe { (self.vtable().whereis)(self.host.host, RStr::new(name), &mut pid) };
        (found != 0).then_some(Pid(pid))
    }
}

/// Deferred replies: answer a call later, from another callback.
impl Ctx<'_> {
    /// In `handle_call`: the call will be answered later, with
    /// [`Ctx::reply`] and the token returned here; the value `handle_call`
    /// returns is dropped. Keep the token in the state: it survives an
    /// upgrade, and the caller keeps waiting (up to its own timeout) while
    /// this process handles other messages. If the process exits first, the
    /// caller learns its exit reason.
    ///
    /// # Errors
    /// Outside `handle_call`, or when this call was already deferred.
    pub fn defer_reply(&mut self) -> Result<ReplyToken, Error> {
        let mut id = 0u64;
        let mut text = Vec::new();
        let mut out = OutBuf::for_vec(&mut text);
        // SAFETY: host function with this call's host handle; `id` and `out`
        // are valid for writes across the call.
        let status = unsafe { (self.vtable().defer_reply)(self.host.host, &mut id, &mut out) };
        status_text(status, text)?;
        Ok(ReplyToken { pid: self.pid(), id })
    }

    /// Answers a deferred call with `reply` (the module's `Reply` type; the
    /// caller decodes it as that). Works from any callback of the process
    /// that deferred the call (a message, a timer, a port event, even the
    /// `handle_call` that deferred it), in any code version. If the caller
    /// already gave up waiting, the reply is dropped, as in Erlang.
    ///
    /// # Errors
    /// The token was already used, belongs to another process, or was
    /// never given out; or `reply` does not encode.
    pub fn reply<T: Serialize>(&mut self, token: ReplyToken, reply: &T) -> Result<(), Error> {
        let bytes = encode(reply)?;
        let mut text = Vec::new();
        let mut out = OutBuf::for_vec(&mut text);
        // SAFETY: host function with this call's host handle; `bytes` and
        // `out` live across the call.
        let status = unsafe {
            (self.vtable().reply)(self.host.host, token.pid.0, token.id, RBytes::from_slice(&bytes), &mut out)
        };
        status_text(status, text)
    }
}

/// Other nodes (Erlang distribution).
impl Ctx<'_> {
    fn send_remote_kind<T: Serialize>(
        &mut self,
        name: &str,
        node: &str,
        kind: u32,
        message: &T,
    ) -> Result<(), Error> {
        let bytes = encode(message)?;
        let mut text = Vec::new();
        let mut out = OutBuf::for_vec(&mut text);
        // SAFETY: host function with this call's host handle; the strings,
        // bytes and `out` live across the call.
        let status = unsafe {
            (self.vtable().send_remote)(
                self.host.host,
                RStr::new(node),
                RStr::new(name),
                kind,
                RBytes::from_slice(&bytes),
                &mut out,
            )
        };
        status_text(status, text)
    }

    /// Sends a plain message to the process registered as `name` on
    /// another node (`node` is its full name, `name@host`): Erlang's
    /// `{Name, Node} ! Message`. It crosses as an Erlang term (structs as
    /// maps, unit variants as atoms; relive's docs/distribution.md has the
    /// mapping). Pids of other nodes' processes, as a message from there
    /// carries them, go to [`Ctx::send`] like local ones.
    ///
    /// # Errors
    /// The node runs no distribution, or the message has no Erlang form.
    /// Like Erlang, a name missing on the other node is not an error.
    pub fn send_remote<T: Serialize>(&mut self, name: &str, node: &str, message: &T) -> Result<(), Error> {
        self.send_remote_kind(name, node, SEND_INFO, message)
    }

    /// As [`Ctx::send_remote`], as a gen_server cast
    /// (`{'$gen_cast', Message}`).
    ///
    /// # Errors
    /// As [`Ctx::send_remote`].
    pub fn cast_remote<T: Serialize>(&mut self, name: &str, node: &str, message: &T) -> Result<(), Error> {
        self.send_remote_kind(name, node, SEND_CAST, message)
    }
}

/// Outbound connections, port hand-over, and the node's configuration.
impl Ctx<'_> {
    /// Hands memory that was freed back to the system. The node's
    /// allocator (glibc's malloc, shared by every module) keeps freed pages
    /// for reuse, so a process that dropped a large map leaves the node's
    /// resident size where it was; this returns them. It walks the heap:
    /// call it after a large free (kv calls it after FLUSHALL), not on
    /// every message.
    pub fn release_free_memory(&mut self) {
        // SAFETY: host function with this call's host handle.
        unsafe { (self.vtable().release_free_memory)(self.host.host) }
    }

    /// Connects to `addr` (`"127.0.0.1:6379"`), waiting at most `timeout`.
    /// The node owns the connection and lends it to this process, as an
    /// accepted one: its bytes arrive as [`Info::Port`] `Data` events (as
    /// they were read), then one `Closed` unless this process closes it;
    /// [`Ctx::port_send`] writes to it. It stays open across upgrades and
    /// closes when its owner exits. This callback waits for the connection
    /// (the node's I/O thread makes it).
    ///
    /// # Errors
    /// The address does not parse, the connection is refused, or it was not
    /// made within `timeout`.
    pub fn connect(&mut self, addr: &str, timeout: Duration) -> Result<PortId, Error> {
        let mut port = 0u64;
        let mut text = Vec::new();
        let mut out = OutBuf::for_vec(&mut text);
        // SAFETY: host function with this call's host handle; `port` and
        // `out` are valid for writes across the call.
        let status = unsafe {
            (self.vtable().connect)(
                self.host.host,
                RStr::new(addr),
                timeout.as_millis().min(u64::MAX as u128) as u64,
                &mut port,
                &mut out,
            )
        };
        status_text(status, text)?;
        Ok(PortId(port))
    }

    /// Gives `port` (a connection or a listener this process owns) to
    /// `pid`: every later event goes to `pid`, and the port now closes when
    /// `pid` exits. Events already delivered stay in this process's
    /// mailbox.
    ///
    /// # Errors
    /// This process does not own the port, it is closed, or `pid` is not
    /// alive.
    pub fn port_set_owner(&mut self, port: PortId, pid: Pid) -> Result<(), Error> {
        let mut text = Vec::new();
        let mut out = OutBuf::for_vec(&mut text);
        // SAFETY: host function with this call's host handle; `out` writes
        // into `text`, alive across the call.
        let status = unsafe { (self.vtable().port_set_owner)(self.host.host, port.0, pid.0, &mut out) };
        status_text(status, text)
    }

    /// The node's configuration (the running release's `[config]` table),
    /// decoded as `T`. With none set it is an empty map: a struct whose
    /// fields all have defaults reads its defaults, a map reads empty, and
    /// `()` reads it too. An `Option<T>` reads `None`, or `Some` if `T`
    /// itself reads an empty map (a struct of defaults).
    ///
    /// # Errors
    /// The configuration does not decode as `T` (the text names the field).
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, Error> {
        let mut bytes = Vec::new();
        let mut out = OutBuf::for_vec(&mut bytes);
        // SAFETY: host function with this call's host handle; `out` writes
        // into `bytes`, alive across the call.
        let status = unsafe { (self.vtable().config)(self.host.host, &mut out) };
        if Status::from_u32(status) != Status::Ok {
            return Err(Error(String::from_utf8_lossy(&bytes).into_owned()));
        }
        decode_config(&bytes).map_err(|e| Error(format!("decoding the node's configuration: {e}")))
    }
}

/// `Ok` for [`Status::Ok`], else the host's error text.
fn status_text(status: u32, text: Vec<u8>) -> Result<(), Error> {
    match Status::from_u32(status) {
        Status::Ok => Ok(()),
        _ => Err(Error(String::from_utf8_lossy(&text).into_owned())),
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    // Most messages are small: one allocation instead of a growing Vec.
    let mut bytes = Vec::with_capacity(64);
    rmp_serde::encode::write_named(&mut bytes, value)
        .map_err(|e| Error(format!("encoding a message: {e}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the options that are set cross, by name, with the timeout in
    /// milliseconds rounded up; they decode back, and an unknown key (an
    /// option this side does not know) is refused by name.
    #[test]
    fn listen_options_cross_as_a_map_of_what_is_set() {
        #[derive(Debug, PartialEq, Deserialize)]
        struct Wire {
            max_connections: u32,
            #[serde(with = "crate::bytes")]
            refusal: Vec<u8>,
            idle_timeout_ms: u64,
        }
        let options = ListenOptions {
            max_connections: Some(3),
            refusal: Some(b"-ERR full\r\n".to_vec()),
            idle_timeout: Some(Duration::from_micros(1500)),
            ..ListenOptions::default()
        };
        let bytes = rmp_serde::to_vec_named(&options).unwrap();
        let wire: Wire = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(wire, Wire { max_connections: 3, refusal: b"-ERR full\r\n".to_vec(), idle_timeout_ms: 2 });
        let back: ListenOptions = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back.idle_timeout, Some(Duration::from_millis(2)));
        assert_eq!(back.max_buffered_bytes, None);

        let none = rmp_serde::to_vec_named(&ListenOptions::default()).unwrap();
        assert_eq!(none, [0x80], "nothing set: an empty map");

        #[derive(Serialize)]
        struct Newer {
            max_connections: u32,
            max_frobs: u32,
        }
        let newer = rmp_serde::to_vec_named(&Newer { max_connections: 1, max_frobs: 2 }).unwrap();
        let refused = rmp_serde::from_slice::<ListenOptions>(&newer).unwrap_err().to_string();
        assert!(refused.contains("max_frobs"), "{refused}");
    }

    #[derive(Debug, Default, PartialEq, Deserialize)]
    #[serde(default)]
    struct Settings {
        name: String,
        limit: u64,
    }

    /// An absent configuration (no bytes, or the empty map a node starts
    /// with) reads as every type an author may choose for "nothing".
    #[test]
    fn an_absent_configuration_reads_as_defaults_unit_none_or_an_empty_map() {
        for empty in [&[][..], &[EMPTY_MAP][..]] {
            assert_eq!(decode_config::<Settings>(empty).unwrap(), Settings::default());
            decode_config::<()>(empty).unwrap();
            assert_eq!(decode_config::<Option<u64>>(empty).unwrap(), None);
            assert_eq!(decode_config::<Option<Settings>>(empty).unwrap(), Some(Settings::default()));
            assert!(decode_config::<std::collections::BTreeMap<String, u64>>(empty).unwrap().is_empty());
        }
        let set = rmp_serde::to_vec_named(&plain::Config { name: "a", limit: 3 }).unwrap();
        assert_eq!(decode_config::<Settings>(&set).unwrap(), Settings { name: "a".into(), limit: 3 });
        assert!(decode_config::<u64>(&set).is_err(), "a configuration of the wrong type is an error");
        let change = ConfigChange::from_bytes(Vec::new(), set);
        assert_eq!(change.old_config::<Settings>().unwrap(), Settings::default());
        assert_eq!(change.new_config::<Settings>().unwrap().limit, 3);
        let error = change.new_config::<u64>().unwrap_err();
        assert!(error.message().starts_with("decoding the new configuration"), "{error}");
    }

    mod plain {
        #[derive(serde::Serialize)]
        pub(super) struct Config {
            pub(super) name: &'static str,
            pub(super) limit: u64,
        }
    }

    /// Tokens and monitors are plain data that a state keeps across an
    /// upgrade: they come back equal from the state's encoding.
    #[test]
    fn reply_tokens_and_monitor_refs_survive_a_state_round_trip() {
        let token = ReplyToken { pid: Pid(7 << 32 | 3), id: 42 };
        let monitor = MonitorRef { id: 9, pid: Pid(1 << 32 | 5) };
        let bytes = StateBytes::encode(&(token.clone(), monitor)).unwrap();
        assert_eq!(bytes.decode::<(ReplyToken, MonitorRef)>().unwrap(), (token, monitor));
    }
}
