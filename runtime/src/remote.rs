//! The hook through which another node's processes are reached.
//!
//! The runtime knows nothing of Erlang distribution: a distribution layer
//! (relive-dist) installs one [`Remote`] with [`crate::Node::set_remote`],
//! and from then on whatever a local process addresses to an external pid
//! ([`Pid::is_external`]) goes to it: sends and casts, links, unlinks, exit
//! signals, monitors, and the `Down` of a local process that a remote one
//! monitors. The distribution layer calls back into the node for what
//! arrives from the wire ([`crate::Node::link_remote`],
//! [`crate::Node::monitor_for_remote`], [`crate::Node::exit_from_remote`]
//! and plain sends).
//!
//! Only messages that can be written as Erlang terms cross: a module
//! process's MessagePack [`crate::Payload`], an [`ExternalTerm`] (Erlang's
//! external term format, for native actors), and the runtime's own `Down`.
//! What arrives from another node is a [`RemoteMessage`]: the term, and its
//! MessagePack form for module processes.

use crate::message::{Down, Message};
use crate::pid::{ExitReason, MonitorRef, Pid};

/// Another node's processes, as the distribution layer reaches them. Every
/// method is called from the thread of the local process that acts (a
/// scheduler worker): it must queue and return, never wait for the network.
pub trait Remote: Send + Sync + 'static {
    /// Sends `message` to the external pid `to` (`cast`: as
    /// `{'$gen_cast', Message}`). `from` is the local sender, when known.
    ///
    /// # Errors
    /// The message back when it cannot go: no connection to the node, or
    /// it is of a type that does not cross (the layer logs why).
    fn send(&self, from: Option<Pid>, to: Pid, message: Message, cast: bool) -> Result<(), Message>;

    /// Sends `message` to the process registered as `name` on `node`
    /// (Erlang's `{Name, Node} ! Message`).
    ///
    /// # Errors
    /// As [`Remote::send`].
    fn send_named(
        &self,
        from: Option<Pid>,
        name: &str,
        node: &str,
        message: Message,
        cast: bool,
    ) -> Result<(), Message>;

    /// Local process `local` linked itself to the external pid `remote`
    /// (already recorded on the local side).
    fn link(&self, local: Pid, remote: Pid);

    /// Local process `local` removed its link to `remote`.
    fn unlink(&self, local: Pid, remote: Pid);

    /// An exit signal from local process `from` to the external pid `to`:
    /// `link_broken` when `from` exited while linked to it (Erlang's EXIT),
    /// otherwise an explicit `exit(To, Reason)` (EXIT2).
    fn exit(&self, from: Pid, to: Pid, reason: &ExitReason, link_broken: bool);

    /// Local process `watcher` monitors the external pid
    /// `monitor.target()`; the layer delivers a [`Down`] with this monitor
    /// when it exits or the connection is lost.
    fn monitor(&self, watcher: Pid, monitor: MonitorRef);

    /// Local process `watcher` removed its monitor (or exited holding it).
    fn demonitor(&self, watcher: Pid, monitor: MonitorRef);

    /// A local process that the external pid `watcher` monitored exited
    /// (or was not alive when monitored).
    fn down(&self, watcher: Pid, down: Down);

    /// This node's name and the nodes connected now (for a status
    /// report; must be cheap).
    fn info(&self) -> RemoteInfo;

    /// A call from local process `from` (`None`: the node's API) to
    /// another node's process, `to` being an external pid or a
    /// [`crate::Dest::Remote`]: a gen_server call on the wire. Answer
    /// through `reply` (with a [`crate::ModuleReply`], what module callers
    /// read); dropping it fails the call. Must not wait: the caller waits.
    fn call(&self, from: Option<Pid>, to: &crate::Dest, request: Message, reply: crate::ReplyTo);
}

/// What [`Remote::info`] tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteInfo {
    /// This node's full name, `name@host`.
    pub node: String,
    /// The nodes connected now, sorted.
    pub connected: Vec<String>,
}

/// A term in Erlang's external term format (starting with the version byte
/// 131): what a native actor sends to another node's process, and gets
/// inside a [`RemoteMessage`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalTerm(pub Vec<u8>);

/// A message from another node's process.
#[derive(Clone, Debug)]
pub struct RemoteMessage {
    /// The sender, when the wire said (SEND_SENDER, REG_SEND).
    pub from: Option<Pid>,
    /// The message as it came (external term format).
    pub term: ExternalTerm,
    /// Its MessagePack form (what a module process reads), or why the term
    /// has none (a reference, a fun, a port, an improper list, ...).
    pub payload: Result<crate::module::Payload, String>,
}
