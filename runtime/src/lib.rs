//! relive-runtime: BEAM-like processes for Rust.
//!
//! A [`Node`] runs many lightweight, isolated processes on an M:N
//! work-stealing scheduler. A process is an [`Actor`] (gen_server-like
//! callbacks) with a mailbox; processes talk by asynchronous messages
//! ([`Node::send`], [`Ctx::cast`]) and calls with a timeout whose reply
//! bypasses the mailbox ([`Ctx::call`]). Links, monitors and exit signals
//! follow Erlang's rules ([`ExitReason`], trap_exit), and [`supervisor`]
//! restarts what fails. Ports ([`port`]) own TCP connections on an I/O
//! thread so a connection outlives any code version. The [`CodeServer`]
//! loads modules (dynamically loaded libraries built against relive-abi),
//! keeps a current and an old version of each, and moves suspended
//! [`ModuleProcess`]es between versions. Module processes get what native
//! ones have (links, monitors, exit signals, names, ports, deferred
//! replies) through relive-abi, and read the node's configuration
//! ([`Node::set_config`]), told of changes by [`Node::config_change`].
//!
//! # Design
//!
//! - Processes are callbacks, not stacks: an idle process is a few hundred
//!   bytes (no stack), and its state can be suspended, taken out and
//!   replaced between two messages, which is what live upgrade needs.
//! - A panic in a callback ends only that process (`catch_unwind` around
//!   every callback); its links and monitors react.
//! - The runtime knows nothing of modules' code versions, plans or
//!   releases; those live above it.
//! - `unsafe` lives only in the loader (`loader.rs`), the boundary with
//!   dynamically loaded modules; the rest of the crate denies it.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use relive_runtime::{Actor, Ctx, Message, Node, NodeConfig, ReplyTo};
//!
//! struct Counter(u64);
//! impl Actor for Counter {
//!     fn handle(&mut self, msg: Message, _ctx: &mut Ctx<'_>) {
//!         if let Ok(n) = msg.downcast::<u64>() { self.0 += n }
//!     }
//!     fn handle_call(&mut self, _req: Message, reply: ReplyTo, _ctx: &mut Ctx<'_>) {
//!         reply.reply_with(self.0)
//!     }
//! }
//!
//! let node = Node::start(NodeConfig::default());
//! let pid = node.spawn(Counter(0)).unwrap();
//! node.send(pid, 5u64).unwrap();
//! let total = node.call(pid, (), Duration::from_secs(1)).unwrap();
//! assert_eq!(total.downcast::<u64>().unwrap(), 5);
//! node.shutdown();
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod code_server;
mod ctx;
mod elf;
mod error;
#[allow(unsafe_code)]
mod loader;
mod mailbox;
mod message;
pub mod module;
mod node;
mod pid;
pub mod port;
mod process;
pub mod remote;
mod scheduler;
pub mod snapshot;
pub mod supervisor;
mod sync;
pub mod system;
mod table;
mod timer;

pub use code_server::{CodeServer, Loaded, ModuleInfo, Prepared, PurgeReport, VersionInfo};
pub use ctx::Ctx;
pub use error::{
    CallError, CodeError, ConfigChangeError, JsonCallError, LinkError, LoadError, MigrateError,
    RegisterError, SendError, SpawnError, SuspendError,
};
pub use loader::{LibraryMetadata, inspect_library, return_freed_memory_promptly};
pub use loader::{ModuleCode, ModuleError, ModuleState, VersionStatsSnapshot};
pub use mailbox::MailboxCounts;
pub use message::{Down, Exit, Message, ReplyTo};
pub use module::{ModuleProcess, ModuleReply, Payload, STATS_BATCH};
pub use node::{Dest, ExitWaiter, Node, NodeConfig};
pub use pid::{ExitReason, ExternalPid, MonitorRef, ParsePidError, Pid, TimerRef};
pub use port::{
    AcceptHandler, CloseReason, ConnLimits, ConnectOpts, Framing, ListenOpts, ListenerInfo, Listening,
    PortError, PortEvent, PortId, PortInfo, PortKind,
};
pub use process::{Actor, actor_fn};
pub use remote::{ExternalTerm, Remote, RemoteInfo, RemoteMessage};
pub use snapshot::{ProcessOrder, ProcessSample, TopProcesses};
pub use supervisor::{ChildSpec, Supervisor, SupervisorError, SupervisorSpec};
