//! relive-abi: the module ABI, a stability boundary.
//!
//! A module is a `cdylib` crate that implements [`Behaviour`] for its state
//! type and says [`export_module!`]. The node loads it with `dlopen`, finds
//! the one exported symbol [`EXPORT_SYMBOL`], and talks to it only through
//! the `#[repr(C)]` tables below. This crate is the only one a module depends
//! on; it has no runtime state.
//!
//! # The contract
//!
//! - The exported function returns a `&'static` [`ModuleVtable`] that starts
//!   with [`MAGIC`] and [`ABI_VERSION`], then the module's name and semver
//!   version. A node refuses a library whose magic, ABI version or symbol is
//!   wrong, naming the file and what it expected.
//! - Everything that crosses is `extern "C"` functions and `#[repr(C)]`
//!   values. Messages, replies and states cross as MessagePack bytes
//!   (rmp-serde), one self-describing format for every version.
//! - Nobody frees the other side's memory. Input is borrowed for the length
//!   of the call ([`RBytes`], [`RStr`]); output goes through a host-provided
//!   [`OutBuf`], a callback that copies the bytes into host memory.
//! - A module's state is an opaque pointer owned by the module version that
//!   made it and freed only by that version's `drop_state`.
//! - Every exported function runs the author's code under `catch_unwind`: a
//!   panic becomes [`Status::Panic`] with the message in the out buffer, never
//!   an unwind across the boundary.
//! - The module reaches the node through the [`HostVtable`] in the
//!   [`HostCtx`] passed to each call: send, call, spawn, timers, log; links,
//!   monitors, exit trapping and exit signals, the registry ([`Ctx::link`],
//!   [`Ctx::monitor`], [`Ctx::trap_exit`], [`Ctx::exit`], [`Ctx::register`]);
//!   deferred replies ([`Ctx::defer_reply`], [`Ctx::reply`]); TCP ports
//!   ([`Ctx::listen`], [`Ctx::listen_with`] with [`ListenOptions`] for
//!   connection caps, idle timeouts and backpressure, [`Ctx::connect`],
//!   [`Ctx::port_set_owner`]); and the
//!   node's configuration ([`Ctx::config`], [`Behaviour::config_change`]).
//!   The node owns everything those make (links, monitors, names, pending
//!   calls, sockets) on the process's behalf, not on its code's, so all of
//!   it outlives any code version: a monitor set by version 1 fires into
//!   version 2, a call deferred by version 1 is answered by version 2, a
//!   client's connection stays open. Port events reach `handle_info` as
//!   [`Info::Port`] with a [`PortEvent`] (kind [`INFO_PORT`]; the bytes of
//!   `Data` cross unencoded, copied once, through
//!   [`ModuleVtable::handle_port_data`]).
//! - New host services are only ever appended to the [`HostVtable`], and
//!   each addition bumps [`ABI_VERSION`] once it is released (2: the port
//!   services; 3: links, monitors, signals, registry, deferred replies,
//!   connect, port hand-over, configuration, listener options; 4: health;
//!   5: unencoded port data). Options
//!   that may grow cross as MessagePack maps ([`ListenOptions`]), so adding
//!   one needs no new entry. A node loads only libraries of its own ABI version.
//! - [`ModuleVtable::describe_types`] writes a description of the state and
//!   message types (their serde shape, traced with serde-reflection); the node
//!   fingerprints it so a layout change without a version bump is refused.
//!
//! # Example
//!
//! ```ignore
//! use relive_abi::prelude::*;
//!
//! #[derive(Serialize, Deserialize)]
//! pub struct Counter { count: u64 }
//!
//! impl Behaviour for Counter {
//!     type Init = u64; type Call = (); type Reply = u64; type Cast = u64; type Info = ();
//!     fn init(start: u64, _ctx: &mut Ctx<'_>) -> Result<Self, Error> { Ok(Counter { count: start }) }
//!     fn handle_call(&mut self, _req: (), _ctx: &mut Ctx<'_>) -> u64 { self.count }
//!     fn handle_cast(&mut self, n: u64, _ctx: &mut Ctx<'_>) { self.count += n }
//! }
//! relive_abi::export_module!(Counter, name = "counter");
//! ```
//!
//! # Migrating from ABI 2
//!
//! A node built with ABI 3 refuses libraries built against an earlier
//! relive-abi, naming the file and both ABI versions: rebuild every module
//! against this crate. Source changes are needed only where a module uses
//! the one changed type:
//!
//! - [`Info::Down`] gained `monitor: MonitorRef` (the monitor that fired):
//!   a pattern `Info::Down { pid, reason }` becomes
//!   `Info::Down { pid, reason, .. }` (or names `monitor`).
//! - Implementors of [`Behaviour`] gain [`Behaviour::config_change`], with
//!   a default that accepts every change: nothing to write unless the
//!   module wants to react to a new configuration.
//! - A caller's timeout error now reads "call timed out after ... waiting
//!   for `<pid>` to reply": code that matched the old text must follow.
//!
//! Everything else is new and optional: links, monitors, exit signals and
//! trapping, the registry, deferred replies, outbound connections, port
//! hand-over and the configuration (MIGRATING.md, next to this crate's
//! Cargo.toml, has the list and the ABI details).

#![deny(missing_docs)]

mod author;
pub mod bytes;
pub mod erlang_pid;
mod ffi;
#[doc(hidden)]
pub mod glue;

pub use author::{
    Behaviour, ConfigChange, Ctx, Error, Extra, Info, ListenOptions, LogLevel, MonitorRef, Pid, PortEvent,
    PortId, ReplyToken, StateBytes, TimerRef,
};
pub use ffi::{
    ABI_VERSION, EXPORT_SYMBOL, HostCtx, HostVtable, INFO_DOWN, INFO_EXIT, INFO_MESSAGE, INFO_PORT, MAGIC,
    ModuleVtable, OutBuf, RBytes, RStr, SEND_CAST, SEND_INFO, Status,
};
pub use semver::Version;

/// The version of this crate, recorded in every module's vtable.
pub const ABI_CRATE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What a module author needs in scope.
pub mod prelude {
    pub use crate::{
        Behaviour, ConfigChange, Ctx, Error, Extra, Info, ListenOptions, LogLevel, MonitorRef, Pid,
        PortEvent, PortId, ReplyToken, StateBytes, TimerRef, Version,
    };
    pub use serde::{Deserialize, Serialize};
}

/// Exports a [`Behaviour`] as a relive module.
///
/// `export_module!(State)` names the module after the crate
/// (`CARGO_PKG_NAME`); `export_module!(State, name = "counter")` names it
/// explicitly (several crates may build versions of one module). The
/// version is the crate's `CARGO_PKG_VERSION`, unless the build sets
/// `RELIVE_MODULE_VERSION` (as `relive watch` does, to give each
/// development build a version of its own; cargo rebuilds when it changes).
#[macro_export]
macro_rules! export_module {
    ($state:ty) => {
        $crate::export_module!($state, name = env!("CARGO_PKG_NAME"));
    };
    ($state:ty, name = $name:expr) => {
        /// The relive module entry point (see relive-abi).
        #[unsafe(no_mangle)]
        pub extern "C" fn relive_module_vtable() -> *const $crate::ModuleVtable {
            static VTABLE: $crate::ModuleVtable = $crate::glue::vtable::<$state>(
                $name,
                match option_env!("RELIVE_MODULE_VERSION") {
                    Some(version) => version,
                    None => env!("CARGO_PKG_VERSION"),
                },
            );
            &VTABLE
        }
    };
}
