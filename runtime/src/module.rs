//! Module processes: a process whose code is a loaded module version.
//!
//! A [`ModuleProcess`] holds the [`ModuleState`] its module made; the state
//! holds its [`ModuleCode`], so a process runs the version that made its
//! state until it is moved ([`ModuleProcess::switch`], used by upgrades).
//! Each process is listed in its version's `pids` while it runs that
//! version: the code server knows who runs old code without scanning.
//!
//! Messages to and from modules are MessagePack [`Payload`]s; a JSON value
//! ([`serde_json::Value`]) sent to a module process is converted to
//! MessagePack on the way in (the JSON bridge), and [`payload_to_json`]
//! turns a reply back. The runtime's own messages reach `handle_info` with
//! their kind: a trapped [`Exit`] (`INFO_EXIT`), a monitor's [`Down`]
//! (`INFO_DOWN`), and an event of a port the process owns
//! ([`crate::PortEvent`]: its bytes as they were read, through the
//! module's `handle_port_data`; the other events re-encoded as
//! relive-abi's `PortEvent`, `INFO_PORT`).
//!
//! A call the module defers (relive-abi's `Ctx::defer_reply`) waits with
//! the process, not its state: any later callback, of this version or the
//! next, answers it (`Ctx::reply`), and the process's exit fails it with
//! the exit reason. [`ModuleProcess::config_change`] runs the module's
//! `config_change` where migrations run (a system task, or a suspended
//! process).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use relive_abi::{INFO_DOWN, INFO_EXIT, INFO_MESSAGE, INFO_PORT};

use crate::ctx::Ctx;
use crate::loader::{Callback, HostCall, ModuleCode, ModuleError, ModuleState, PendingReplies};
use crate::message::{Down, Exit, Message, ReplyTo};
use crate::node::Node;
use crate::pid::{ExitReason, Pid};
use crate::port::PortEvent;
use crate::process::Actor;
use crate::remote::RemoteMessage;

/// A MessagePack message for (or reply from) a module process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload(pub Vec<u8>);

impl Payload {
    /// An empty MessagePack map: the node's configuration until one is set.
    pub fn empty_map() -> Payload {
        Payload(vec![0x80])
    }
}

/// What a module process answers a call with: the reply, or why there is
/// none (the request did not decode, or the module reported an error).
pub type ModuleReply = Result<Payload, String>;

/// Converts a JSON value to a MessagePack payload.
///
/// # Errors
/// The text of the encoder's error (only for values MessagePack cannot
/// represent).
pub fn json_to_payload(value: &serde_json::Value) -> Result<Payload, String> {
    rmp_serde::to_vec_named(value).map(Payload).map_err(|e| format!("converting JSON to MessagePack: {e}"))
}

/// Converts a MessagePack payload to JSON.
///
/// # Errors
/// The text of the decoder's error (bytes that are not MessagePack).
pub fn payload_to_json(payload: &Payload) -> Result<serde_json::Value, String> {
    rmp_serde::from_slice(&payload.0).map_err(|e| format!("reading MessagePack as JSON: {e}"))
}

/// A process running a module.
pub struct ModuleProcess {
    code: Arc<ModuleCode>,
    init_arg: Vec<u8>,
    state: Option<ModuleState>,
    pid: Option<Pid>,
    /// A call whose handler panicked: kept until the process's exit drops
    /// it, so the caller learns the exit reason.
    dying_call: Option<ReplyTo>,
    /// Calls the module deferred and has not answered: the process's, not
    /// its code's, so they survive a switch; dropped with the process,
    /// failing each with its exit reason.
    replies: PendingReplies,
    /// Counted in its version's `starting` until init has run.
    starting: bool,
    /// Callbacks run since spawn.
    handled: u64,
    /// Of those, not yet added to the version's stats.
    unreported: u64,
    /// Calls answered and not yet added to the version's stats (added with
    /// `unreported`, or at once with an error reply).
    unreported_replies: u64,
}

/// Processes add to their version's stats once per this many callbacks,
/// and time one callback in as many.
pub const STATS_BATCH: u64 = 8;

impl ModuleProcess {
    /// Runs a `handle_info` or `handle_port_data` callback; a message the
    /// module cannot decode is counted as lost and logged.
    fn deliver(&mut self, ctx: &mut Ctx<'_>, callback: Callback<'_>) {
        if let (Err(ModuleError::BadInput(error)), _) = self.run(ctx, callback, None) {
            self.count_undecodable();
            tracing::warn!(pid = %ctx.pid(), module = %self.describe(), "dropped a message: {error}");
        }
    }

    pub(crate) fn new(code: Arc<ModuleCode>, init_arg: Vec<u8>) -> ModuleProcess {
        code.starting.fetch_add(1, Ordering::AcqRel);
        ModuleProcess {
            code,
            init_arg,
            state: None,
            pid: None,
            dying_call: None,
            replies: PendingReplies::default(),
            starting: true,
            handled: 0,
            unreported: 0,
            unreported_replies: 0,
        }
    }

    /// Stops counting this process as starting on its version.
    fn started(&mut self) {
        if std::mem::replace(&mut self.starting, false) {
            self.code.starting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The version this process runs.
    pub fn code(&self) -> &Arc<ModuleCode> {
        self.state.as_ref().map_or(&self.code, ModuleState::code)
    }

    /// The state as MessagePack (what `code_change` of another version
    /// takes).
    pub(crate) fn export_state(&mut self) -> Result<Vec<u8>, ModuleError> {
        self.state_mut()?.export()
    }

    /// The state in the format of an older version.
    pub(crate) fn downgrade_state(&mut self, to: &semver::Version) -> Result<Vec<u8>, ModuleError> {
        self.state_mut()?.downgrade(to)
    }

    fn state_mut(&mut self) -> Result<&mut ModuleState, ModuleError> {
        self.state.as_mut().ok_or_else(|| ModuleError::Failed("the process has not run init".into()))
    }

    /// Moves this process to a state made by another version: the process
    /// leaves the old version's process list and joins the new one's. The
    /// old state is returned, to be freed (by the code that made it) or
    /// switched back to.
    pub fn switch(&mut self, state: ModuleState) -> Option<ModuleState> {
        self.report_stats();
        if let Some(pid) = self.pid {
            self.code().pids.remove(pid);
            state.code().pids.insert(pid);
        }
        self.code = state.code().clone();
        self.state.replace(state)
    }

    /// Builds this process's state for version `to`, touching nothing of
    /// the process: its version exports the state (or, moving to an older
    /// version, `downgrade`s it) and `to`'s `code_change` reads it.
    ///
    /// # Errors
    /// The module's error from export, downgrade or code_change.
    pub fn migrated_state(&mut self, to: &Arc<ModuleCode>, extra: &[u8]) -> Result<ModuleState, ModuleError> {
        let running = self.code().version().clone();
        let bytes = self.state_for(to.version())?;
        to.code_change(&running, &bytes, extra)
    }

    /// This process's state as version `to`'s `code_change` takes it: the
    /// running version's export, or its `downgrade` when `to` is older. A
    /// copy: the process keeps its state.
    ///
    /// # Errors
    /// The module's error from export or downgrade.
    pub fn state_for(&mut self, to: &semver::Version) -> Result<Vec<u8>, ModuleError> {
        if to < self.code().version() { self.downgrade_state(to) } else { self.export_state() }
    }

    /// Callbacks this process has run (messages handled) since it started.
    pub fn handled(&self) -> u64 {
        self.handled
    }

    /// Calls this process deferred (relive-abi's `Ctx::defer_reply`) and
    /// has not answered yet.
    pub fn deferred_calls(&self) -> usize {
        self.replies.len()
    }

    /// Tells this process's state that the node's configuration changed
    /// from `old` to `new` (its module's `config_change`). Run it where a
    /// migration runs: in a system task (`Node::system_task`, a
    /// [`crate::system::TaskGroup`], after `TaskGuard::commit`) or on a
    /// suspended process (`Node::with_suspended`); [`Node::config_change`]
    /// does the first for one process. The callback acts as this process
    /// (its sends, links and calls are this process's), queuing whoever it
    /// wakes on the global queue. Set the node's configuration to `new`
    /// first ([`Node::set_config`]): the callback reads it.
    ///
    /// # Errors
    /// The module's error ([`ModuleError::Failed`]) or panic
    /// ([`ModuleError::Panicked`]): the change is refused; the process
    /// keeps running on the state as the callback left it. Asking to stop
    /// from the callback is refused the same way (a change is refused by
    /// returning an error).
    pub fn config_change(&mut self, node: &Node, old: &Payload, new: &Payload) -> Result<(), ModuleError> {
        let (Some(pid), Some(state)) = (self.pid, self.state.as_mut()) else {
            return Err(ModuleError::Failed("the process has not run init".into()));
        };
        let mut host = HostCall::detached(node, pid, &mut self.replies);
        let result = state.run(&mut host, Callback::ConfigChange(&old.0, &new.0));
        if let Some(reason) = host.stop.take() {
            return Err(ModuleError::Failed(format!(
                "config_change asked to stop the process ({reason}); refuse a configuration by returning an error"
            )));
        }
        result.map(drop)
    }

    /// Asks this process's state whether it is healthy (its module's
    /// `health` callback), where migrations run: in a system task or on a
    /// suspended process, as [`ModuleProcess::config_change`].
    ///
    /// # Errors
    /// The module's error ([`ModuleError::Failed`]) or panic
    /// ([`ModuleError::Panicked`]): it is not healthy. A stop asked for
    /// from the callback is an error too, and does not stop the process.
    pub fn health(&mut self, node: &Node) -> Result<(), ModuleError> {
        let (Some(pid), Some(state)) = (self.pid, self.state.as_mut()) else {
            return Err(ModuleError::Failed("the process has not run init".into()));
        };
        let mut host = HostCall::detached(node, pid, &mut self.replies);
        let result = state.run(&mut host, Callback::Health);
        if let Some(reason) = host.stop.take() {
            return Err(ModuleError::Failed(format!(
                "health asked to stop the process ({reason}); report bad health by returning an error"
            )));
        }
        result.map(drop)
    }

    /// Adds this process's pending counts (handled messages, replies) to
    /// its version's stats, which otherwise take them in batches: a health
    /// window does this in every process on the new code before it reads
    /// the stats.
    pub fn flush_stats(&mut self) {
        self.report_stats();
    }

    fn report_stats(&mut self) {
        if self.unreported > 0 {
            let unreported = std::mem::take(&mut self.unreported);
            self.code().stats.handled.fetch_add(unreported, Ordering::Relaxed);
        }
        if self.unreported_replies > 0 {
            let replies = std::mem::take(&mut self.unreported_replies);
            self.code().stats.replies.fetch_add(replies, Ordering::Relaxed);
        }
    }

    /// Counts a call answered now; an error reply is added to the
    /// version's stats at once, with the replies before it.
    fn count_reply(&mut self, error: bool) {
        self.unreported_replies += 1;
        if error {
            let stats = &self.code.stats;
            stats.replies.fetch_add(std::mem::take(&mut self.unreported_replies), Ordering::Relaxed);
            stats.error_replies.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a cast or plain message this version could not decode.
    fn count_undecodable(&self) {
        self.code.stats.undecodable.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs a callback and acts on what it asked for: a stop, or a crash.
    /// `call` is the call `handle_call` answers; it comes back unless the
    /// module deferred it.
    fn run(
        &mut self,
        ctx: &mut Ctx<'_>,
        callback: Callback<'_>,
        call: Option<ReplyTo>,
    ) -> (Result<Vec<u8>, ModuleError>, Option<ReplyTo>) {
        let Some(state) = self.state.as_mut() else {
            return (Err(ModuleError::Failed("the process has not run init".into())), call);
        };
        self.handled += 1;
        self.unreported += 1;
        let timed = (self.unreported == STATS_BATCH).then(std::time::Instant::now);
        let mut host = HostCall::in_turn(ctx, &mut self.replies);
        host.call = call;
        let result = state.run(&mut host, callback);
        let (stop, call) = (host.stop.take(), host.call.take());
        // `self.code` is the state's version (see `switch`).
        let stats = &self.code.stats;
        if let Some(started) = timed {
            stats.samples.fetch_add(1, Ordering::Relaxed);
            stats.sampled_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            stats.handled.fetch_add(std::mem::take(&mut self.unreported), Ordering::Relaxed);
            if self.unreported_replies > 0 {
                stats.replies.fetch_add(std::mem::take(&mut self.unreported_replies), Ordering::Relaxed);
            }
        }
        if let Some(reason) = stop {
            if !reason.is_clean() {
                stats.crashes.fetch_add(1, Ordering::Relaxed);
            }
            ctx.stop(reason);
        }
        if let Err(ModuleError::Panicked(message)) = &result {
            // The module's panic was contained at the boundary; it still
            // ends this process (and only it), as a panic in a native
            // handler would.
            stats.crashes.fetch_add(1, Ordering::Relaxed);
            ctx.stop(ExitReason::Panic(message.as_str().into()));
        }
        (result, call)
    }

    fn describe(&self) -> String {
        format!("module {} {}", self.code().name(), self.code().version())
    }
}

/// Takes the MessagePack bytes out of a message: a [`Payload`] as is, a JSON
/// value converted.
fn payload_of(message: Message) -> Result<Vec<u8>, Message> {
    let message = match message.downcast::<Payload>() {
        Ok(payload) => return Ok(payload.0),
        Err(other) => other,
    };
    // From another node: the MessagePack form the distribution layer made.
    let message = match message.downcast::<RemoteMessage>() {
        Ok(RemoteMessage { payload: Ok(payload), .. }) => return Ok(payload.0),
        Ok(unmapped) => return Err(Message::new(unmapped)),
        Err(other) => other,
    };
    match message.downcast::<serde_json::Value>() {
        Ok(json) => json_to_payload(&json).map(|p| p.0).map_err(Message::new),
        Err(other) => Err(other),
    }
}

/// Whether a reply is a `Result::Err` as serde writes it in MessagePack
/// (a one-entry map keyed `"Err"`): the convention by which a module's
/// `handle_call` answers an error. A prefix test, so it costs nothing on
/// the call path.
fn is_err_reply(reply: &[u8]) -> bool {
    reply.starts_with(&[0x81, 0xa3, b'E', b'r', b'r'])
}

fn pack<T: serde::Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec(value).expect("tuples of integers and strings always encode")
}

/// A runtime port event other than data as a module reads it
/// (MessagePack of [`relive_abi::PortEvent`], [`INFO_PORT`]); data goes to
/// the module's `handle_port_data` as it was read.
fn port_event(event: PortEvent) -> Vec<u8> {
    use relive_abi::PortId as Id;
    let event = match event {
        PortEvent::Data { port, bytes } => relive_abi::PortEvent::Data { port: Id(port.as_u64()), bytes },
        PortEvent::Accepted { listener, port, peer } => relive_abi::PortEvent::Accepted {
            listener: Id(listener.as_u64()),
            port: Id(port.as_u64()),
            peer: peer.to_string(),
        },
        PortEvent::Closed { port, reason } => {
            relive_abi::PortEvent::Closed { port: Id(port.as_u64()), reason: reason.to_string() }
        }
    };
    rmp_serde::to_vec_named(&event).expect("port events always encode")
}

impl Actor for ModuleProcess {
    fn init(&mut self, ctx: &mut Ctx<'_>) -> Result<(), ExitReason> {
        let arg = std::mem::take(&mut self.init_arg);
        let started = self.code.init(&mut HostCall::in_turn(ctx, &mut self.replies), &arg);
        if started.is_ok() {
            self.code.pids.insert(ctx.pid());
        }
        self.started();
        match started {
            Ok(mut state) => {
                self.pid = Some(ctx.pid());
                if let Some(reason) = state.stop.take() {
                    ctx.stop(reason);
                }
                self.state = Some(state);
                Ok(())
            }
            Err(error) => {
                self.code.stats.crashes.fetch_add(1, Ordering::Relaxed);
                Err(match error {
                    ModuleError::Panicked(message) => ExitReason::Panic(message.into()),
                    error => ExitReason::error(format!("init of {} failed: {error}", self.describe())),
                })
            }
        }
    }

    fn handle(&mut self, message: Message, ctx: &mut Ctx<'_>) {
        let (kind, bytes) = match payload_of(message) {
            Ok(bytes) => (INFO_MESSAGE, bytes),
            Err(message) => match message.downcast::<Exit>() {
                Ok(exit) => (INFO_EXIT, pack(&(exit.from.as_u64(), exit.reason.to_string()))),
                Err(message) => match message.downcast::<Down>() {
                    Ok(down) => {
                        (INFO_DOWN, pack(&(down.monitor.id, down.pid.as_u64(), down.reason.to_string())))
                    }
                    Err(message) => match message.downcast::<PortEvent>() {
                        // The path every request of a server takes: the
                        // bytes as read, not encoded.
                        Ok(PortEvent::Data { port, bytes }) => {
                            return self.deliver(ctx, Callback::PortData(port.as_u64(), &bytes));
                        }
                        Ok(event) => (INFO_PORT, port_event(event)),
                        Err(message) => {
                            match message.downcast_ref::<RemoteMessage>() {
                                Some(RemoteMessage { payload: Err(why), .. }) => {
                                    tracing::warn!(pid = %ctx.pid(), module = %self.describe(), "dropped a message from another node: {why}")
                                }
                                _ => {
                                    tracing::warn!(pid = %ctx.pid(), module = %self.describe(), "dropped a message that is not MessagePack or JSON")
                                }
                            }
                            return;
                        }
                    },
                },
            },
        };
        self.deliver(ctx, Callback::Info(kind, &bytes));
    }

    fn handle_cast(&mut self, message: Message, ctx: &mut Ctx<'_>) {
        let Ok(bytes) = payload_of(message) else {
            tracing::warn!(pid = %ctx.pid(), module = %self.describe(), "dropped a cast that is not MessagePack or JSON");
            return;
        };
        if let (Err(ModuleError::BadInput(error)), _) = self.run(ctx, Callback::Cast(&bytes), None) {
            self.count_undecodable();
            tracing::warn!(pid = %ctx.pid(), module = %self.describe(), "dropped a cast: {error}");
        }
    }

    fn handle_call(&mut self, request: Message, reply: ReplyTo, ctx: &mut Ctx<'_>) {
        let Ok(bytes) = payload_of(request) else {
            let error = format!("{} takes MessagePack or JSON requests", self.describe());
            return reply.reply_with::<ModuleReply>(Err(error));
        };
        let (result, reply) = self.run(ctx, Callback::Call(&bytes), Some(reply));
        // Deferred: the module answers it later, and what handle_call
        // returned is dropped.
        let Some(reply) = reply else { return };
        match result {
            Ok(answer) => {
                self.count_reply(is_err_reply(&answer));
                reply.reply_with::<ModuleReply>(Ok(Payload(answer)))
            }
            // The process is stopping with the panic as its reason; the
            // caller learns it as the callee's exit (a crash, not a reply).
            Err(ModuleError::Panicked(_)) => self.dying_call = Some(reply),
            Err(error) => {
                self.count_reply(true);
                reply.reply_with::<ModuleReply>(Err(format!("{}: {error}", self.describe())))
            }
        }
    }

    fn as_module_process(&mut self) -> Option<&mut ModuleProcess> {
        Some(self)
    }
}

impl Drop for ModuleProcess {
    fn drop(&mut self) {
        self.started();
        self.report_stats();
        if let Some(pid) = self.pid {
            self.code().pids.remove(pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::{CloseReason, PortId};

    /// `Result::Err` replies, however the module encodes them (named or
    /// compact), are told apart from `Ok` and from other maps.
    #[test]
    fn err_replies_are_recognised() {
        let err: Result<u64, String> = Err("over quota".into());
        let ok: Result<u64, String> = Ok(7);
        assert!(is_err_reply(&rmp_serde::to_vec_named(&err).unwrap()));
        assert!(is_err_reply(&rmp_serde::to_vec(&err).unwrap()));
        assert!(!is_err_reply(&rmp_serde::to_vec_named(&ok).unwrap()));
        let unit_err: Result<(), ()> = Err(());
        assert!(is_err_reply(&rmp_serde::to_vec_named(&unit_err).unwrap()));
        let other = std::collections::BTreeMap::from([("Errand", 1)]);
        assert!(!is_err_reply(&rmp_serde::to_vec_named(&other).unwrap()));
        assert!(!is_err_reply(&rmp_serde::to_vec_named(&"Err").unwrap()));
    }

    /// The bytes `INFO_PORT` carries read back as relive-abi's `PortEvent`
    /// (what a module's glue decodes). Data does not take this path (it
    /// goes to `handle_port_data` as read), but its mapping stays total.
    #[test]
    fn port_events_cross_as_relive_abi_port_events() {
        use relive_abi::{PortEvent as Abi, PortId as Id};
        let peer: std::net::SocketAddr = "127.0.0.1:4242".parse().unwrap();
        let accepted = PortEvent::Accepted { listener: PortId::from_u64(1), port: PortId::from_u64(2), peer };
        let decoded: Abi = rmp_serde::from_slice(&port_event(accepted)).unwrap();
        assert_eq!(decoded, Abi::Accepted { listener: Id(1), port: Id(2), peer: "127.0.0.1:4242".into() });

        let closed = PortEvent::Closed { port: PortId::from_u64(2), reason: CloseReason::PeerClosed };
        let decoded: Abi = rmp_serde::from_slice(&port_event(closed)).unwrap();
        assert_eq!(decoded, Abi::Closed { port: Id(2), reason: "closed by peer".into() });

        let bytes: Vec<u8> = (0..=255).collect();
        let encoded = port_event(PortEvent::Data { port: PortId::from_u64(2), bytes: bytes.clone() });
        assert!(encoded.len() < 300, "bytes cross as bin, not as an array of integers");
        let decoded: Abi = rmp_serde::from_slice(&encoded).unwrap();
        assert_eq!(decoded, Abi::Data { port: Id(2), bytes });
    }
}
