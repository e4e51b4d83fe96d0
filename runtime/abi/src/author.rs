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
/// as MessagePack ([`crate::INFO_PORT`]).
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
        #[serde(with = "bytes")]
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

/// `Vec<u8>` as MessagePack `bin` (serde's default is an array of
/// integers, twice the size and much slower); reads either.
mod bytes {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::ser::Serializer;

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
                Ok(v.as_bytes().to_vec())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        deserializer.deserialize_byte_buf(Bytes)
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
    /// A monitored process exited.
    Down {
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

    /// Answers a call.
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

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    // Most messages are small: one allocation instead of a growing Vec.
    let mut bytes = Vec::with_capacity(64);
    rmp_serde::encode::write_named(&mut bytes, value)
        .map_err(|e| Error(format!("encoding a message: {e}")))?;
    Ok(bytes)
}
