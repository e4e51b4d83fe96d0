//! The `#[repr(C)]` tables and values that cross between a node and a
//! module. Changing anything here is an ABI change: bump [`ABI_VERSION`].

use std::ffi::c_void;

/// First field of every [`ModuleVtable`]: "RELIVE" and a format byte.
pub const MAGIC: u64 = u64::from_be_bytes(*b"RELIVE\x00\x01");

/// The version of the tables in this file. 2 added the port services
/// ([`HostVtable::listen`], [`HostVtable::port_send`],
/// [`HostVtable::port_close`]) and [`INFO_PORT`]. 3 added links, monitors,
/// exit trapping and signals, the registry, deferred replies, outbound
/// connections, port hand-over and the node's configuration
/// ([`HostVtable::link`] to [`HostVtable::config`]), listener options
/// ([`HostVtable::listen_with`]), [`ModuleVtable::config_change`], and the monitor in [`INFO_DOWN`].
/// 4 added [`ModuleVtable::health`] (see MIGRATING.md for the rest). 5 added
/// [`ModuleVtable::handle_port_data`]: a port's bytes cross as they were
/// read.
pub const ABI_VERSION: u32 = 5;

/// The symbol a module exports: `extern "C" fn() -> *const ModuleVtable`.
pub const EXPORT_SYMBOL: &str = "relive_module_vtable";

/// `kind` of [`HostVtable::send`]: a plain message (`handle_info`).
pub const SEND_INFO: u32 = 0;
/// `kind` of [`HostVtable::send`]: a cast (`handle_cast`).
pub const SEND_CAST: u32 = 1;

/// `kind` of [`ModuleVtable::handle_info`]: a user message.
pub const INFO_MESSAGE: u32 = 0;
/// `kind` of [`ModuleVtable::handle_info`]: a trapped exit, MessagePack
/// `(from_pid: u64, reason: String)`.
pub const INFO_EXIT: u32 = 1;
/// `kind` of [`ModuleVtable::handle_info`]: a monitor's down message,
/// MessagePack `(monitor: u64, pid: u64, reason: String)` (the monitor's id,
/// as [`HostVtable::monitor`] returned it; before ABI 3, `(pid, reason)`).
pub const INFO_DOWN: u32 = 2;
/// `kind` of [`ModuleVtable::handle_info`]: an event of a port the process
/// owns, MessagePack of [`crate::PortEvent`] (an externally tagged enum:
/// `{"Accepted": {"listener": u64, "port": u64, "peer": String}}` or
/// `{"Closed": {"port": u64, "reason": String}}`; `Data` comes through
/// [`ModuleVtable::handle_port_data`]).
pub const INFO_PORT: u32 = 3;

/// Result of every call across the boundary, as a `u32`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Done; output (if any) is in the out buffer.
    Ok = 0,
    /// The callback returned an error; its text is in the out buffer.
    Error = 1,
    /// The callback panicked; the panic message is in the out buffer.
    Panic = 2,
    /// The input bytes did not decode as the expected type; the decode
    /// error is in the out buffer.
    BadInput = 3,
}

impl Status {
    /// Reads a status; an unknown value (a broken module) is an error.
    pub fn from_u32(value: u32) -> Status {
        match value {
            0 => Status::Ok,
            2 => Status::Panic,
            3 => Status::BadInput,
            _ => Status::Error,
        }
    }
}

/// A borrowed UTF-8 string.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RStr {
    /// Start of the bytes.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

impl RStr {
    /// Borrows a `'static` string (usable in statics).
    pub const fn from_static(s: &'static str) -> RStr {
        RStr { ptr: s.as_ptr(), len: s.len() }
    }

    /// Borrows a string for the length of a call.
    pub fn new(s: &str) -> RStr {
        RStr { ptr: s.as_ptr(), len: s.len() }
    }

    /// The string, or `None` if it is not UTF-8.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be readable for `'a` (the other side's promise).
    pub unsafe fn as_str<'a>(&self) -> Option<&'a str> {
        // SAFETY: the caller promises the range is readable for 'a.
        let bytes = unsafe { bytes_of(self.ptr, self.len) };
        std::str::from_utf8(bytes).ok()
    }
}

/// Borrowed bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RBytes {
    /// Start of the bytes.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

impl RBytes {
    /// Borrows a slice for the length of a call.
    pub fn from_slice(bytes: &[u8]) -> RBytes {
        RBytes { ptr: bytes.as_ptr(), len: bytes.len() }
    }

    /// The bytes.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be readable for `'a` (the other side's promise).
    pub unsafe fn as_slice<'a>(&self) -> &'a [u8] {
        // SAFETY: the caller promises the range is readable for 'a.
        unsafe { bytes_of(self.ptr, self.len) }
    }
}

/// # Safety
/// `ptr..ptr+len` readable for `'a`, or `len == 0`.
unsafe fn bytes_of<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 || ptr.is_null() {
        &[]
    } else {
        // SAFETY: non-null, and the caller promises `len` readable bytes.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

/// An output buffer owned by the caller: the callee appends bytes through
/// `write`, which copies them into the caller's memory.
#[repr(C)]
pub struct OutBuf {
    /// The caller's buffer, opaque to the callee.
    pub sink: *mut c_void,
    /// Appends `len` bytes at `ptr` to `sink`.
    pub write: unsafe extern "C" fn(sink: *mut c_void, ptr: *const u8, len: usize),
}

impl OutBuf {
    /// An out buffer that appends to `vec` (valid while `vec` is borrowed).
    pub fn for_vec(vec: &mut Vec<u8>) -> OutBuf {
        unsafe extern "C" fn append(sink: *mut c_void, ptr: *const u8, len: usize) {
            // SAFETY: `sink` is the `&mut Vec<u8>` given to `for_vec`, alive
            // for the call; `ptr..ptr+len` is the writer's readable slice.
            // Extending a Vec<u8> cannot panic except on allocation failure,
            // which aborts rather than unwinds.
            unsafe {
                let vec = &mut *(sink as *mut Vec<u8>);
                vec.extend_from_slice(bytes_of(ptr, len));
            }
        }
        OutBuf { sink: vec as *mut Vec<u8> as *mut c_void, write: append }
    }

    /// Appends `bytes`.
    pub fn push(&mut self, bytes: &[u8]) {
        // SAFETY: `write` and `sink` come from the caller, which keeps the
        // sink alive for the call; `bytes` is readable.
        unsafe { (self.write)(self.sink, bytes.as_ptr(), bytes.len()) }
    }
}

/// What the node passes to every module call: its services and the handle
/// of the calling process.
#[repr(C)]
pub struct HostCtx {
    /// The node's services.
    pub vtable: *const HostVtable,
    /// The calling process, opaque to the module.
    pub host: *mut c_void,
}

/// The node's services to a module. Every function is called on the thread
/// running the module's callback, with that call's `HostCtx::host`.
/// Statuses: [`Status`] as `u32`; error text goes to `out` where given.
#[repr(C)]
pub struct HostVtable {
    /// The node's [`ABI_VERSION`].
    pub abi_version: u32,
    /// The calling process's pid.
    pub self_pid: unsafe extern "C" fn(host: *mut c_void) -> u64,
    /// Sends `msg` (MessagePack) to `to` as [`SEND_INFO`] or [`SEND_CAST`];
    /// [`Status::Error`] if `to` is dead (the message is dropped).
    pub send: unsafe extern "C" fn(host: *mut c_void, to: u64, kind: u32, msg: RBytes) -> u32,
    /// As `send`, to a registered name.
    pub send_named: unsafe extern "C" fn(host: *mut c_void, name: RStr, kind: u32, msg: RBytes) -> u32,
    /// Calls `to` (or `name`, if `name.len > 0`) and writes the reply
    /// (MessagePack) or the error text to `out`.
    pub call: unsafe extern "C" fn(
        host: *mut c_void,
        to: u64,
        name: RStr,
        request: RBytes,
        timeout_ms: u64,
        out: *mut OutBuf,
    ) -> u32,
    /// Spawns a process running the current version of `module` with init
    /// argument `arg`, linked to the caller if `link != 0`; writes its pid to
    /// `pid_out`, or the error text to `out`.
    pub spawn: unsafe extern "C" fn(
        host: *mut c_void,
        module: RStr,
        arg: RBytes,
        link: u32,
        pid_out: *mut u64,
        out: *mut OutBuf,
    ) -> u32,
    /// Delivers `msg` to `to` as a plain message after `delay_ms`; returns a
    /// timer reference.
    pub send_after: unsafe extern "C" fn(host: *mut c_void, to: u64, msg: RBytes, delay_ms: u64) -> u64,
    /// Cancels a timer; 1 if it had not fired.
    pub cancel_timer: unsafe extern "C" fn(host: *mut c_void, timer: u64) -> u32,
    /// Logs `msg` at `level` (0 error, 1 warn, 2 info, 3 debug).
    pub log: unsafe extern "C" fn(host: *mut c_void, level: u32, msg: RStr),
    /// Ends the calling process with `reason` once the callback returns
    /// (`"normal"`, `"shutdown"`, or any text for an error).
    pub stop: unsafe extern "C" fn(host: *mut c_void, reason: RStr),
    /// Since ABI 2. Opens a TCP listener on `addr` (`"host:port"`; port 0
    /// picks a free one) owned by the calling process, which also owns every
    /// connection it accepts; their bytes arrive unframed, as they were read
    /// ([`INFO_PORT`] events). Writes the listener's port id to `port_out`
    /// and the address it is bound to (text) to `out`, or the error text to
    /// `out`. The runtime owns the sockets: they outlive any code version,
    /// and close when the owning process exits.
    pub listen:
        unsafe extern "C" fn(host: *mut c_void, addr: RStr, port_out: *mut u64, out: *mut OutBuf) -> u32,
    /// Since ABI 2. Queues `bytes` on connection `port` (they are written
    /// in order, without blocking the caller); [`Status::Error`] if the port
    /// is unknown, closed or a listener.
    pub port_send: unsafe extern "C" fn(host: *mut c_void, port: u64, bytes: RBytes) -> u32,
    /// Since ABI 2. Closes `port` (a connection writes out what is queued
    /// first); no `Closed` event follows. [`Status::Error`] if it is unknown
    /// or already closed.
    pub port_close: unsafe extern "C" fn(host: *mut c_void, port: u64) -> u32,
    /// Since ABI 3. Links the calling process with `pid` (both ways).
    /// [`Status::Error`] with the text in `out` if `pid` is not alive; a
    /// `noproc` exit signal then reaches the caller too, as in Erlang.
    pub link: unsafe extern "C" fn(host: *mut c_void, pid: u64, out: *mut OutBuf) -> u32,
    /// Since ABI 3. Removes a link with `pid` (both ways), if there is one.
    pub unlink: unsafe extern "C" fn(host: *mut c_void, pid: u64),
    /// Since ABI 3. Monitors `pid`; returns the monitor's id (never 0). A
    /// down message ([`INFO_DOWN`]) follows when `pid` exits, at once with
    /// reason `noproc` if it is not alive.
    pub monitor: unsafe extern "C" fn(host: *mut c_void, pid: u64) -> u64,
    /// Since ABI 3. Removes monitor `monitor` on `pid`; 1 if it had not
    /// fired.
    pub demonitor: unsafe extern "C" fn(host: *mut c_void, monitor: u64, pid: u64) -> u32,
    /// Since ABI 3. Turns exit trapping on (`on != 0`) or off; returns the
    /// previous setting (1 or 0). Trapped exits arrive as [`INFO_EXIT`].
    pub trap_exit: unsafe extern "C" fn(host: *mut c_void, on: u32) -> u32,
    /// Since ABI 3. Registers the calling process as `name`;
    /// [`Status::Error`] with the text in `out` if the name is taken or the
    /// process already has one.
    pub register: unsafe extern "C" fn(host: *mut c_void, name: RStr, out: *mut OutBuf) -> u32,
    /// Since ABI 3. Removes a registered name (whoever holds it); 1 if it
    /// was registered.
    pub unregister: unsafe extern "C" fn(host: *mut c_void, name: RStr) -> u32,
    /// Since ABI 3. Writes the pid registered as `name` to `pid_out`;
    /// returns 1 if there is one, 0 if not.
    pub whereis: unsafe extern "C" fn(host: *mut c_void, name: RStr, pid_out: *mut u64) -> u32,
    /// Since ABI 3. Sends an exit signal with `reason` from the calling
    /// process to `pid` (`"kill"` cannot be trapped; `"normal"` is ignored
    /// by a process that does not trap exits). Nothing happens if `pid` is
    /// not alive.
    pub exit: unsafe extern "C" fn(host: *mut c_void, pid: u64, reason: RStr),
    /// Since ABI 3. Inside `handle_call` only: the call will be answered
    /// later with [`HostVtable::reply`]; what `handle_call` returns is then
    /// dropped. Writes the token's id to `token_out`, or the error text to
    /// `out` (outside `handle_call`, or deferred twice).
    pub defer_reply: unsafe extern "C" fn(host: *mut c_void, token_out: *mut u64, out: *mut OutBuf) -> u32,
    /// Since ABI 3. Answers the call deferred as token `token` by process
    /// `owner` with `reply` (MessagePack). Only `owner` may answer, from any
    /// of its callbacks and any code version. [`Status::Error`] with the
    /// text in `out` for a token already answered, unknown, or another
    /// process's.
    pub reply: unsafe extern "C" fn(
        host: *mut c_void,
        owner: u64,
        token: u64,
        reply: RBytes,
        out: *mut OutBuf,
    ) -> u32,
    /// Since ABI 3. Opens a TCP connection to `addr` (`"host:port"`), owned
    /// by the calling process like an accepted one (bytes unframed, as
    /// [`INFO_PORT`] events). Waits at most `timeout_ms` for the connection
    /// (the node connects on its I/O thread). Writes the port id to
    /// `port_out`, or the error text to `out`.
    pub connect: unsafe extern "C" fn(
        host: *mut c_void,
        addr: RStr,
        timeout_ms: u64,
        port_out: *mut u64,
        out: *mut OutBuf,
    ) -> u32,
    /// Since ABI 3. Gives `port` to process `pid`: its later events go to
    /// `pid`, and it closes when `pid` exits. Only the port's owner may give
    /// it away; [`Status::Error`] with the text in `out` otherwise, or if
    /// the port is closed or `pid` is not alive.
    pub port_set_owner: unsafe extern "C" fn(host: *mut c_void, port: u64, pid: u64, out: *mut OutBuf) -> u32,
    /// Since ABI 3. Writes the node's configuration (MessagePack; an empty
    /// map when none was set) to `out`.
    pub config: unsafe extern "C" fn(host: *mut c_void, out: *mut OutBuf) -> u32,
    /// Since ABI 3 (appended before its release, so no version bump). As
    /// [`HostVtable::listen`], with limits for the listener and each
    /// connection it accepts: `opts` is MessagePack of a map with the
    /// options that are set, by name (`max_connections`, `refusal`,
    /// `idle_timeout_ms`, `max_buffered_bytes`, `max_unhandled_bytes`; see
    /// [`crate::ListenOptions`]); an absent key keeps the node's default.
    /// The options cross as bytes so that more can be added without another
    /// change to this table; a node refuses (error text in `out`) a key it
    /// does not know, so a limit is never silently ignored.
    pub listen_with: unsafe extern "C" fn(
        host: *mut c_void,
        addr: RStr,
        opts: RBytes,
        port_out: *mut u64,
        out: *mut OutBuf,
    ) -> u32,
    /// Hands the allocator's free pages back to the system (glibc keeps
    /// what a process frees in its arenas; a no-op elsewhere). For a module
    /// that has just freed much memory (a FLUSHALL): it walks the heap, so
    /// not for every callback.
    pub release_free_memory: unsafe extern "C" fn(host: *mut c_void),
    /// Since ABI 4. Sends `msg` (MessagePack) as [`SEND_INFO`] or
    /// [`SEND_CAST`] to the process registered as `name` on another node
    /// (`node`: `name@host`), Erlang's `{Name, Node} ! Msg`; the message
    /// crosses as an Erlang term (see relive's docs/distribution.md).
    /// [`Status::Error`] with the text in `out` when the node runs no
    /// distribution or the message has no Erlang form; like Erlang, a
    /// missing name there is not an error here.
    pub send_remote: unsafe extern "C" fn(
        host: *mut c_void,
        node: RStr,
        name: RStr,
        kind: u32,
        msg: RBytes,
        out: *mut OutBuf,
    ) -> u32,
    /// Since ABI 4. Replaces the options of listener `port`, which the
    /// calling process owns, in place: `opts` as for
    /// [`HostVtable::listen_with`]. Connections it accepts from then on get
    /// them; connections open already keep theirs. For a process upgraded
    /// from a version whose listener had other limits. [`Status::Error`]
    /// with the text in `out` for a port that is not a listener this
    /// process owns, or for options the node refuses.
    pub listen_set_options:
        unsafe extern "C" fn(host: *mut c_void, port: u64, opts: RBytes, out: *mut OutBuf) -> u32,
}

/// A module: what its exported function returns. Every function pointer is
/// implemented by [`crate::glue`] around the author's [`crate::Behaviour`].
#[repr(C)]
pub struct ModuleVtable {
    /// [`MAGIC`].
    pub magic: u64,
    /// [`ABI_VERSION`] the module was built with.
    pub abi_version: u32,
    /// The relive-abi crate version it was built with.
    pub abi_crate_version: RStr,
    /// Module name.
    pub name: RStr,
    /// Module version (semver).
    pub version: RStr,
    /// Writes a text description of the state and message types.
    pub describe_types: unsafe extern "C" fn(out: *mut OutBuf) -> u32,
    /// Builds a state from an init argument; the state pointer goes to
    /// `state_out`, errors to `out`.
    pub init: unsafe extern "C" fn(
        host: *const HostCtx,
        arg: RBytes,
        state_out: *mut *mut c_void,
        out: *mut OutBuf,
    ) -> u32,
    /// Handles a call; the reply goes to `out`.
    pub handle_call: unsafe extern "C" fn(
        state: *mut c_void,
        host: *const HostCtx,
        request: RBytes,
        out: *mut OutBuf,
    ) -> u32,
    /// Handles a cast.
    pub handle_cast: unsafe extern "C" fn(
        state: *mut c_void,
        host: *const HostCtx,
        message: RBytes,
        out: *mut OutBuf,
    ) -> u32,
    /// Handles a plain message of `kind` ([`INFO_MESSAGE`], [`INFO_EXIT`],
    /// [`INFO_DOWN`], [`INFO_PORT`]).
    pub handle_info: unsafe extern "C" fn(
        state: *mut c_void,
        host: *const HostCtx,
        kind: u32,
        message: RBytes,
        out: *mut OutBuf,
    ) -> u32,
    /// Writes the state as MessagePack (what an upgrade hands the next
    /// version).
    pub export_state: unsafe extern "C" fn(state: *mut c_void, out: *mut OutBuf) -> u32,
    /// Builds this version's state from an older version's state bytes.
    pub code_change: unsafe extern "C" fn(
        from_version: RStr,
        old_state: RBytes,
        extra: RBytes,
        state_out: *mut *mut c_void,
        out: *mut OutBuf,
    ) -> u32,
    /// Writes the state in the format of an older version `to_version`.
    pub downgrade: unsafe extern "C" fn(state: *mut c_void, to_version: RStr, out: *mut OutBuf) -> u32,
    /// Frees a state made by this version.
    pub drop_state: unsafe extern "C" fn(state: *mut c_void),
    /// Since ABI 3. Tells the state that the node's configuration changed
    /// from `old` to `new` (both MessagePack); an error or a panic refuses
    /// the change (text in `out`).
    pub config_change: unsafe extern "C" fn(
        state: *mut c_void,
        host: *const HostCtx,
        old: RBytes,
        new: RBytes,
        out: *mut OutBuf,
    ) -> u32,
    /// Since ABI 4. Asks the state whether it is healthy (an upgrade's
    /// canary and health windows ask the processes on the new code): an
    /// error or a panic says it is not (text in `out`). It must not change
    /// the state.
    pub health: unsafe extern "C" fn(state: *mut c_void, host: *const HostCtx, out: *mut OutBuf) -> u32,
    /// Since ABI 5. Handles bytes that port `port`, owned by the process,
    /// received: `bytes` as the read returned them, not encoded (the host
    /// hands over the buffer the port read into). The module copies them
    /// once, into the [`crate::PortEvent::Data`] its `handle_info` gets;
    /// MessagePack cost an encoding, a decoding and two more copies on the
    /// path every request of a server takes.
    pub handle_port_data: unsafe extern "C" fn(
        state: *mut c_void,
        host: *const HostCtx,
        port: u64,
        bytes: RBytes,
        out: *mut OutBuf,
    ) -> u32,
}

// SAFETY: a ModuleVtable only holds function pointers and pointers to
// `'static` immutable strings; sharing it between threads is sound.
unsafe impl Sync for ModuleVtable {}
// SAFETY: as above; it is never mutated.
unsafe impl Send for ModuleVtable {}
