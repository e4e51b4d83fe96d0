//! The loader: the one place in relive-runtime that crosses the module ABI
//! (see relive-abi), and so the one place with `unsafe`.
//!
//! It opens a library ([`load_library`]), checks its vtable, and wraps every
//! vtable function in a safe method: [`ModuleCode`] for one loaded version,
//! [`ModuleState`] for one process's state made by that version. It also
//! implements the host services a module calls back into ([`HOST_VTABLE`]).
//!
//! # Invariants
//!
//! - A [`ModuleCode`] keeps its `Library` loaded as long as it lives; every
//!   [`ModuleState`] holds an `Arc<ModuleCode>`, so no state outlives the code
//!   that must free it, and `drop_state` of the right version frees it.
//! - A state pointer is used by one thread at a time: a `ModuleState` is
//!   owned by one process, and `&mut self` on every call.
//! - Every host service runs under `catch_unwind`: no panic unwinds into
//!   module code.
//! - A module's ports are the runtime's ([`crate::port`]): `listen` makes
//!   the calling process own the listener and, with no accept handler, every
//!   connection it accepts, and `connect` makes it own the connection; their
//!   events reach the module as `INFO_PORT`, and their bytes through
//!   `handle_port_data` (see `ModuleProcess::handle`).
//!   `listen_with` decodes the module's `ListenOptions` into the runtime's
//!   per-listener cap, refusal line and connection limits.
//! - Every host service acts as one process: in its own turn through its
//!   `Ctx`, or, for a callback run outside its messages (`config_change`
//!   from a system task or on a suspended process), through the node's API
//!   as that process. What a service makes (links, monitors, names, ports)
//!   is the node's, kept for the process; deferred calls wait in the
//!   process's `PendingReplies`, never in module memory, so all of it
//!   survives a switch of the process's code.

use std::collections::{HashMap, HashSet};
use std::ffi::c_void;
use std::fs;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use relive_abi::{
    ABI_VERSION, EXPORT_SYMBOL, HostCtx, HostVtable, MAGIC, ModuleVtable, OutBuf, RBytes, RStr, SEND_CAST,
    Status,
};
use sha2::{Digest, Sha256};

use crate::ctx::Ctx;
use crate::error::{CallError, LoadError, SendError};
use crate::message::{Envelope, Message, ReplyTo};
use crate::node::{Dest, Node, NodeInner, Sched};
use crate::pid::{ExitReason, MonitorRef, Pid};
use crate::process::Watcher;
use crate::scheduler::WorkerLocal;

/// One loaded version of a module.
pub struct ModuleCode {
    name: String,
    version: semver::Version,
    sha256: String,
    path: PathBuf,
    source: PathBuf,
    abi_crate_version: String,
    types: String,
    fingerprint: String,
    /// Processes running this version (each registers itself in init and
    /// leaves when its state is dropped or moved to another version).
    pub(crate) pids: PidSet,
    /// Processes created to run this version whose init has not run yet.
    pub(crate) starting: std::sync::atomic::AtomicUsize,
    /// How this version's processes fare (health windows and canaries
    /// compare versions by it).
    pub(crate) stats: VersionStats,
    vtable: NonNull<ModuleVtable>,
    /// Keeps the library mapped while `vtable` and any state of this
    /// version may be used; dropping it is the `dlclose`.
    _library: libloading::Library,
}

// SAFETY: the vtable is immutable `'static` data inside a library that this
// value keeps loaded; its functions may be called from any thread (they
// only touch the state pointer passed in, one thread at a time).
unsafe impl Send for ModuleCode {}
// SAFETY: as above; no interior mutability besides `pids` (a Mutex).
unsafe impl Sync for ModuleCode {}

impl std::fmt::Debug for ModuleCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ModuleCode({} {} {})", self.name, self.version, &self.sha256[..12])
    }
}

/// Why a module callback failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    /// The callback returned an error.
    #[error("{0}")]
    Failed(String),
    /// The callback panicked.
    #[error("panic: {0}")]
    Panicked(String),
    /// The input did not decode as the type the module expects.
    #[error("bad input: {0}")]
    BadInput(String),
}

fn status_result(status: u32, out: Vec<u8>) -> Result<Vec<u8>, ModuleError> {
    let text = || String::from_utf8_lossy(&out).into_owned();
    match Status::from_u32(status) {
        Status::Ok => Ok(out),
        Status::Error => Err(ModuleError::Failed(text())),
        Status::Panic => Err(ModuleError::Panicked(text())),
        Status::BadInput => Err(ModuleError::BadInput(text())),
    }
}

/// The processes running one version, in shards: thousands of processes
/// switching version at once on every worker would otherwise queue on one
/// lock.
pub(crate) struct PidSet {
    shards: [Mutex<HashSet<Pid>>; PID_SHARDS],
}

const PID_SHARDS: usize = 16;

impl Default for PidSet {
    fn default() -> PidSet {
        PidSet { shards: std::array::from_fn(|_| Mutex::new(HashSet::new())) }
    }
}

impl PidSet {
    fn shard(&self, pid: Pid) -> &Mutex<HashSet<Pid>> {
        &self.shards[pid.index() as usize % PID_SHARDS]
    }

    pub(crate) fn insert(&self, pid: Pid) {
        self.shard(pid).lock().insert(pid);
    }

    pub(crate) fn remove(&self, pid: Pid) {
        self.shard(pid).lock().remove(&pid);
    }

    pub(crate) fn contains(&self, pid: Pid) -> bool {
        self.shard(pid).lock().contains(&pid)
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().len()).sum()
    }

    pub(crate) fn to_vec(&self) -> Vec<Pid> {
        self.shards.iter().flat_map(|shard| shard.lock().iter().copied().collect::<Vec<_>>()).collect()
    }
}

/// Counters of one version, shared by its processes. Processes add to
/// them in batches (see `ModuleProcess`), so workers seldom contend.
#[derive(Default)]
pub(crate) struct VersionStats {
    pub(crate) crashes: std::sync::atomic::AtomicU64,
    pub(crate) handled: std::sync::atomic::AtomicU64,
    pub(crate) samples: std::sync::atomic::AtomicU64,
    pub(crate) sampled_ns: std::sync::atomic::AtomicU64,
    pub(crate) replies: std::sync::atomic::AtomicU64,
    pub(crate) error_replies: std::sync::atomic::AtomicU64,
    pub(crate) undecodable: std::sync::atomic::AtomicU64,
}

/// A reading of a version's counters; subtract two to get a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VersionStatsSnapshot {
    /// Handler panics and abnormal stops of its processes (init failures
    /// included).
    pub crashes: u64,
    /// Messages its processes handled (counted in batches of
    /// `STATS_BATCH` per process, so up to that many per process lag).
    pub handled: u64,
    /// Handler calls timed (one in `STATS_BATCH`).
    pub samples: u64,
    /// Their total time.
    pub sampled_ns: u64,
    /// Calls its processes answered (batched as `handled`; a process
    /// adds its pending count with each error reply, so errors never run
    /// ahead of the replies they are part of).
    pub replies: u64,
    /// Of those, error replies: a request the version could not decode,
    /// a reply that did not encode, or a reply that is a `Result::Err`
    /// (MessagePack `{"Err": ...}`).
    pub error_replies: u64,
    /// Casts and plain messages its processes could not decode (a variant
    /// this version dropped): dropped unhandled, so lost.
    pub undecodable: u64,
}

impl VersionStatsSnapshot {
    /// What happened between `earlier` and this reading.
    pub fn since(&self, earlier: &VersionStatsSnapshot) -> VersionStatsSnapshot {
        VersionStatsSnapshot {
            crashes: self.crashes.saturating_sub(earlier.crashes),
            handled: self.handled.saturating_sub(earlier.handled),
            samples: self.samples.saturating_sub(earlier.samples),
            sampled_ns: self.sampled_ns.saturating_sub(earlier.sampled_ns),
            replies: self.replies.saturating_sub(earlier.replies),
            error_replies: self.error_replies.saturating_sub(earlier.error_replies),
            undecodable: self.undecodable.saturating_sub(earlier.undecodable),
        }
    }

    /// Adds `other`'s counts to these (several versions' windows as one).
    pub fn add(&mut self, other: &VersionStatsSnapshot) {
        self.crashes += other.crashes;
        self.handled += other.handled;
        self.samples += other.samples;
        self.sampled_ns += other.sampled_ns;
        self.replies += other.replies;
        self.error_replies += other.error_replies;
        self.undecodable += other.undecodable;
    }

    /// Mean sampled handler time, if any was sampled.
    pub fn mean_handler_time(&self) -> Option<Duration> {
        (self.samples > 0).then(|| Duration::from_nanos(self.sampled_ns / self.samples))
    }
}

/// Checks, copies to `code_dir/<sha256>.so` and opens the library at
/// `source`, then validates its vtable.
///
/// # Errors
/// [`LoadError`]: unreadable file, not a shared library, dlopen failure
/// (truncated or corrupt), missing export, wrong magic or ABI version, bad
/// name or version.
pub(crate) fn load_library(code_dir: &Path, source: &Path) -> Result<ModuleCode, LoadError> {
    let io = |source_err| LoadError::Io { path: source.to_path_buf(), source: source_err };
    let bytes = fs::read(source).map_err(io)?;
    if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
        return Err(LoadError::NotALibrary { path: source.to_path_buf() });
    }
    crate::elf::check(&bytes)
        .map_err(|detail| LoadError::Malformed { path: source.to_path_buf(), detail })?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    fs::create_dir_all(code_dir).map_err(|e| LoadError::Io { path: code_dir.to_path_buf(), source: e })?;
    // dlopen caches by path: a content-addressed copy makes each version a
    // distinct library, and the same bytes the same one.
    let path = code_dir.join(format!("{sha256}.so"));
    if !path.exists() {
        let mut temp = tempfile::NamedTempFile::new_in(code_dir)
            .map_err(|e| LoadError::Io { path: code_dir.to_path_buf(), source: e })?;
        temp.write_all(&bytes).and_then(|()| temp.as_file().sync_all()).map_err(io)?;
        temp.persist(&path).map_err(|e| LoadError::Io { path: path.clone(), source: e.error })?;
    }
    // SAFETY: loading a library runs its initialisers. relive modules are
    // Rust cdylibs built against relive-abi, whose only initialisers are the
    // standard library's; a foreign library is the operator's choice and is
    // checked right below before any of its functions is called.
    let library = unsafe { libloading::Library::new(&path) }
        .map_err(|e| LoadError::Open { path: source.to_path_buf(), detail: e.to_string() })?;
    // SAFETY: the symbol's type is fixed by the ABI (relive_abi::export_module!).
    let entry = unsafe { library.get::<extern "C" fn() -> *const ModuleVtable>(EXPORT_SYMBOL.as_bytes()) }
        .map_err(|_| LoadError::NoExport { path: source.to_path_buf(), symbol: EXPORT_SYMBOL })?;
    let vtable = NonNull::new(entry() as *mut ModuleVtable).ok_or_else(|| LoadError::BadModule {
        path: source.to_path_buf(),
        what: "its vtable pointer is null".into(),
    })?;
    // SAFETY: the pointer came from the module's export and is 'static in
    // the library we keep loaded. We read only the leading magic and ABI
    // version before trusting the layout of the rest.
    let (magic, abi_version) = unsafe { (vtable.as_ref().magic, vtable.as_ref().abi_version) };
    if magic != MAGIC {
        return Err(LoadError::BadMagic { path: source.to_path_buf(), found: magic });
    }
    if abi_version != ABI_VERSION {
        return Err(LoadError::AbiMismatch { path: source.to_path_buf(), found: abi_version });
    }
    // SAFETY: magic and ABI version match, so the layout is ABI_VERSION's.
    let table = unsafe { vtable.as_ref() };
    // SAFETY: the strings are 'static in the loaded library.
    let text = |s: RStr, what: &str| {
        unsafe { s.as_str() }.map(str::to_string).ok_or_else(|| LoadError::BadModule {
            path: source.to_path_buf(),
            what: format!("its {what} is not UTF-8"),
        })
    };
    let name = text(table.name, "module name")?;
    let version_text = text(table.version, "version")?;
    let abi_crate_version = text(table.abi_crate_version, "relive-abi version")?;
    if name.is_empty() || name.contains(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')) {
        return Err(LoadError::BadModule {
            path: source.to_path_buf(),
            what: format!("module name {name:?} must be letters, digits, '_' or '-'"),
        });
    }
    let version = semver::Version::parse(&version_text).map_err(|e| LoadError::BadModule {
        path: source.to_path_buf(),
        what: format!("version {version_text:?} is not semver: {e}"),
    })?;
    let mut types = Vec::new();
    // SAFETY: vtable function with a valid out buffer.
    let status = unsafe { (table.describe_types)(&mut OutBuf::for_vec(&mut types)) };
    let types = status_result(status, types).map_err(|e| LoadError::BadModule {
        path: source.to_path_buf(),
        what: format!("describing its types failed: {e}"),
    })?;
    let types = String::from_utf8_lossy(&types).into_owned();
    let fingerprint = hex::encode(Sha256::digest(types.as_bytes()));
    Ok(ModuleCode {
        name,
        version,
        sha256,
        path,
        source: source.to_path_buf(),
        abi_crate_version,
        types,
        fingerprint,
        pids: PidSet::default(),
        starting: std::sync::atomic::AtomicUsize::new(0),
        stats: VersionStats::default(),
        vtable,
        _library: library,
    })
}

/// What a library says about itself (its vtable and type description),
/// read by [`inspect_library`] without a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibraryMetadata {
    /// The module name it exports.
    pub name: String,
    /// Its version.
    pub version: semver::Version,
    /// The relive-abi version it was built with.
    pub abi_crate_version: String,
    /// sha256 of the file.
    pub sha256: String,
    /// The description of its state and message types.
    pub types: String,
    /// sha256 of `types`: equal fingerprints, equal layouts.
    pub fingerprint: String,
}

/// Opens the library at `path` with every check of a load (ELF, export,
/// magic, ABI version, name, semver version) and returns what it says
/// about itself, for tools without a node (`relive release build` checks
/// each library before packing it). The library is opened from a copy in
/// a temporary directory, closed again, and installed nowhere.
///
/// # Errors
/// [`LoadError`], as a load of the same file would fail.
pub fn inspect_library(path: &Path) -> Result<LibraryMetadata, LoadError> {
    let code_dir =
        tempfile::tempdir().map_err(|e| LoadError::Io { path: std::env::temp_dir(), source: e })?;
    let code = load_library(code_dir.path(), path)?;
    Ok(LibraryMetadata {
        name: code.name.clone(),
        version: code.version.clone(),
        abi_crate_version: code.abi_crate_version.clone(),
        sha256: code.sha256.clone(),
        types: code.types.clone(),
        fingerprint: code.fingerprint.clone(),
    })
}

impl ModuleCode {
    fn table(&self) -> &ModuleVtable {
        // SAFETY: validated at load; 'static in `self.library`, which lives
        // as long as `self`.
        unsafe { self.vtable.as_ref() }
    }

    /// The module's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its version.
    pub fn version(&self) -> &semver::Version {
        &self.version
    }

    /// sha256 of the library file.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The content-addressed copy that was opened (`code/<sha256>.so`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file it was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The relive-abi version it was built with.
    pub fn abi_crate_version(&self) -> &str {
        &self.abi_crate_version
    }

    /// sha256 of its type description: equal fingerprints, equal layouts.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The description of its state and message types.
    pub fn types(&self) -> &str {
        &self.types
    }

    /// Processes running this version now, counting those still starting.
    pub fn process_count(&self) -> usize {
        self.pids.len() + self.starting.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Crashes, messages handled and sampled handler time of this
    /// version's processes so far.
    pub fn stats(&self) -> VersionStatsSnapshot {
        use std::sync::atomic::Ordering::Relaxed;
        VersionStatsSnapshot {
            crashes: self.stats.crashes.load(Relaxed),
            handled: self.stats.handled.load(Relaxed),
            samples: self.stats.samples.load(Relaxed),
            sampled_ns: self.stats.sampled_ns.load(Relaxed),
            replies: self.stats.replies.load(Relaxed),
            error_replies: self.stats.error_replies.load(Relaxed),
            undecodable: self.stats.undecodable.load(Relaxed),
        }
    }

    /// Their pids, sorted.
    pub fn processes(&self) -> Vec<Pid> {
        let mut pids = self.pids.to_vec();
        pids.sort();
        pids
    }

    /// Runs `init` as the process `host` acts for.
    pub(crate) fn init(
        self: &Arc<Self>,
        host: &mut HostCall<'_, '_>,
        arg: &[u8],
    ) -> Result<ModuleState, ModuleError> {
        let mut state: *mut c_void = std::ptr::null_mut();
        let mut out = Vec::new();
        // SAFETY: vtable function; every pointer is valid for the call.
        let status = unsafe {
            (self.table().init)(
                &host.as_host_ctx(),
                RBytes::from_slice(arg),
                &mut state,
                &mut OutBuf::for_vec(&mut out),
            )
        };
        let stop = host.stop.take();
        status_result(status, out)?;
        let ptr = NonNull::new(state).ok_or_else(|| ModuleError::Failed("init returned no state".into()))?;
        Ok(ModuleState { code: self.clone(), ptr, stop })
    }

    /// Builds this version's state from another version's state bytes
    /// (MessagePack, as [`crate::ModuleProcess::state_for`] gives them);
    /// `extra` is MessagePack or empty.
    ///
    /// # Errors
    /// The module's refusal, a panic in it, or bad bytes.
    pub fn code_change(
        self: &Arc<Self>,
        from: &semver::Version,
        old_state: &[u8],
        extra: &[u8],
    ) -> Result<ModuleState, ModuleError> {
        let from = from.to_string();
        let mut state: *mut c_void = std::ptr::null_mut();
        let mut out = Vec::new();
        // SAFETY: vtable function; every pointer is valid for the call.
        let status = unsafe {
            (self.table().code_change)(
                RStr::new(&from),
                RBytes::from_slice(old_state),
                RBytes::from_slice(extra),
                &mut state,
                &mut OutBuf::for_vec(&mut out),
            )
        };
        status_result(status, out)?;
        let ptr =
            NonNull::new(state).ok_or_else(|| ModuleError::Failed("code_change returned no state".into()))?;
        Ok(ModuleState { code: self.clone(), ptr, stop: None })
    }
}

/// One process's state, made by (and freed by) one module version.
pub struct ModuleState {
    code: Arc<ModuleCode>,
    ptr: NonNull<c_void>,
    /// A stop `init` asked for (later callbacks leave theirs in their
    /// `HostCall`).
    pub(crate) stop: Option<ExitReason>,
}

// SAFETY: the state is the module's `Behaviour` value, which relive-abi
// requires to be `Send`; this handle is its only owner.
unsafe impl Send for ModuleState {}

impl Drop for ModuleState {
    fn drop(&mut self) {
        // SAFETY: `ptr` was made by `self.code` and is freed exactly once,
        // here; `drop_state` contains panics.
        unsafe { (self.code.table().drop_state)(self.ptr.as_ptr()) }
    }
}

/// Which callback to run on a state.
pub(crate) enum Callback<'m> {
    Call(&'m [u8]),
    Cast(&'m [u8]),
    Info(u32, &'m [u8]),
    /// The node's configuration changed from the first to the second.
    ConfigChange(&'m [u8], &'m [u8]),
    /// Bytes a port of the process read (ABI 5), as read.
    PortData(u64, &'m [u8]),
    /// Is the state healthy (ABI 4)?
    Health,
}

impl ModuleState {
    pub(crate) fn code(&self) -> &Arc<ModuleCode> {
        &self.code
    }

    /// Runs a callback as the process `host` acts for; a call's reply
    /// bytes on success. A stop the module asked for is left in
    /// `host.stop`.
    pub(crate) fn run(
        &mut self,
        host: &mut HostCall<'_, '_>,
        callback: Callback<'_>,
    ) -> Result<Vec<u8>, ModuleError> {
        let host_ctx = host.as_host_ctx();
        let mut out = Vec::new();
        let mut buf = OutBuf::for_vec(&mut out);
        let table = self.code.table();
        let state = self.ptr.as_ptr();
        // SAFETY: vtable functions of the version that made `state`; every
        // pointer is valid for the call and `&mut self` makes it exclusive.
        let status = unsafe {
            match callback {
                Callback::Call(bytes) => {
                    (table.handle_call)(state, &host_ctx, RBytes::from_slice(bytes), &mut buf)
                }
                Callback::Cast(bytes) => {
                    (table.handle_cast)(state, &host_ctx, RBytes::from_slice(bytes), &mut buf)
                }
                Callback::Info(kind, bytes) => {
                    (table.handle_info)(state, &host_ctx, kind, RBytes::from_slice(bytes), &mut buf)
                }
                Callback::ConfigChange(old, new) => (table.config_change)(
                    state,
                    &host_ctx,
                    RBytes::from_slice(old),
                    RBytes::from_slice(new),
                    &mut buf,
                ),
                Callback::Health => (table.health)(state, &host_ctx, &mut buf),
                Callback::PortData(port, bytes) => {
                    (table.handle_port_data)(state, &host_ctx, port, RBytes::from_slice(bytes), &mut buf)
                }
            }
        };
        status_result(status, out)
    }

    /// The state as MessagePack (for `code_change` of another version).
    pub(crate) fn export(&mut self) -> Result<Vec<u8>, ModuleError> {
        let mut out = Vec::new();
        // SAFETY: as in `run`.
        let status =
            unsafe { (self.code.table().export_state)(self.ptr.as_ptr(), &mut OutBuf::for_vec(&mut out)) };
        status_result(status, out)
    }

    /// The state in the format of older version `to`.
    pub(crate) fn downgrade(&mut self, to: &semver::Version) -> Result<Vec<u8>, ModuleError> {
        let to = to.to_string();
        let mut out = Vec::new();
        // SAFETY: as in `run`.
        let status = unsafe {
            (self.code.table().downgrade)(self.ptr.as_ptr(), RStr::new(&to), &mut OutBuf::for_vec(&mut out))
        };
        status_result(status, out)
    }
}

/// The calls a module process deferred ([`HostVtable::defer_reply`]) and
/// has not answered yet. Kept by the process, not by its code, so a call
/// deferred by one version can be answered by the next; dropped with the
/// process, which fails each waiting call with its exit reason.
#[derive(Default)]
pub(crate) struct PendingReplies {
    /// Tokens given out so far; token ids are 1..=issued.
    issued: u64,
    waiting: HashMap<u64, ReplyTo>,
}

impl PendingReplies {
    fn defer(&mut self, reply: ReplyTo) -> u64 {
        self.issued += 1;
        self.waiting.insert(self.issued, reply);
        self.issued
    }

    fn take(&mut self, token: u64, pid: Pid) -> Result<ReplyTo, String> {
        if let Some(reply) = self.waiting.remove(&token) {
            return Ok(reply);
        }
        Err(if token == 0 || token > self.issued {
            format!(
                "reply token {token} of {pid} was never given out by this process; use the token defer_reply returned"
            )
        } else {
            format!("reply token {token} of {pid} was already used: a deferred call is answered once")
        })
    }

    /// Calls deferred and not answered yet.
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }
}

/// Who a host service acts for.
enum Caller<'c, 'n> {
    /// A callback in the process's own turn: its `Ctx`, so wake-ups go to
    /// the worker's own queue and calls may run their callee inline.
    Turn(&'c mut Ctx<'n>),
    /// A callback outside a message (a configuration change run by a system
    /// task or on a suspended process): the node's API as that process.
    Detached { node: Arc<NodeInner>, pid: Pid },
}

/// The host side of one module callback: the process it runs as, what it
/// asked for, and the call it is answering.
pub(crate) struct HostCall<'c, 'n> {
    caller: Caller<'c, 'n>,
    /// A stop the callback asked for.
    pub(crate) stop: Option<ExitReason>,
    replies: &'c mut PendingReplies,
    /// The call `handle_call` is answering, until the callback defers it
    /// (then it waits in `replies`); `None` outside `handle_call`.
    pub(crate) call: Option<ReplyTo>,
}

impl<'c, 'n> HostCall<'c, 'n> {
    /// For a callback in the process's own turn.
    pub(crate) fn in_turn(ctx: &'c mut Ctx<'n>, replies: &'c mut PendingReplies) -> HostCall<'c, 'n> {
        HostCall { caller: Caller::Turn(ctx), stop: None, replies, call: None }
    }

    /// For a callback of process `pid` run outside its messages.
    pub(crate) fn detached(node: &Node, pid: Pid, replies: &'c mut PendingReplies) -> HostCall<'c, 'n> {
        HostCall {
            caller: Caller::Detached { node: node.inner.clone(), pid },
            stop: None,
            replies,
            call: None,
        }
    }

    fn as_host_ctx(&mut self) -> HostCtx {
        HostCtx { vtable: &HOST_VTABLE, host: self as *mut HostCall<'c, 'n> as *mut c_void }
    }

    fn pid(&self) -> Pid {
        match &self.caller {
            Caller::Turn(ctx) => ctx.pid(),
            Caller::Detached { pid, .. } => *pid,
        }
    }

    fn node(&self) -> &Arc<NodeInner> {
        match &self.caller {
            Caller::Turn(ctx) => ctx.inner(),
            Caller::Detached { node, .. } => node,
        }
    }

    fn sched(&self) -> Sched<'_> {
        match &self.caller {
            Caller::Turn(ctx) => ctx.sched(),
            Caller::Detached { .. } => Sched::Global,
        }
    }

    fn worker(&self) -> Option<&WorkerLocal> {
        match &self.caller {
            Caller::Turn(ctx) => Some(ctx.worker()),
            Caller::Detached { .. } => None,
        }
    }

    fn send(&self, to: Dest, kind: u32, payload: Vec<u8>) -> Result<(), SendError> {
        let message = Message::new(crate::module::Payload(payload));
        let envelope = if kind == SEND_CAST { Envelope::Cast(message) } else { Envelope::Info(message) };
        self.node().send_as(Some(self.pid()), to, envelope, self.sched())
    }
}

/// The node's services to modules.
pub(crate) static HOST_VTABLE: HostVtable = HostVtable {
    abi_version: ABI_VERSION,
    self_pid: host_self_pid,
    send: host_send,
    send_named: host_send_named,
    call: host_call,
    spawn: host_spawn,
    send_after: host_send_after,
    cancel_timer: host_cancel_timer,
    log: host_log,
    stop: host_stop,
    listen: host_listen,
    port_send: host_port_send,
    port_close: host_port_close,
    link: host_link,
    unlink: host_unlink,
    monitor: host_monitor,
    demonitor: host_demonitor,
    trap_exit: host_trap_exit,
    register: host_register,
    unregister: host_unregister,
    whereis: host_whereis,
    exit: host_exit,
    defer_reply: host_defer_reply,
    reply: host_reply,
    connect: host_connect,
    port_set_owner: host_port_set_owner,
    config: host_config,
    listen_with: host_listen_with,
    release_free_memory: host_release_free_memory,
    send_remote: host_send_remote,
    listen_set_options: host_listen_set_options,
};

/// Runs a host service for the module callback whose `HostCall` is `host`,
/// containing panics.
///
/// # Safety
/// `host` is the `HostCall` this module callback was given, alive and not
/// otherwise borrowed for the call (the callback is synchronous).
unsafe fn with_host<R>(host: *mut c_void, failed: R, f: impl FnOnce(&mut HostCall<'_, '_>) -> R) -> R {
    // SAFETY: see the function's contract.
    let call = unsafe { &mut *(host as *mut HostCall<'_, '_>) };
    catch_unwind(AssertUnwindSafe(|| f(call))).unwrap_or(failed)
}

/// # Safety
/// As `RBytes::as_slice`: the module's bytes are readable for the call.
unsafe fn bytes<'a>(b: RBytes) -> &'a [u8] {
    // SAFETY: the module promises readable bytes for the call.
    unsafe { b.as_slice() }
}

/// # Safety
/// As `RStr::as_str`.
unsafe fn text<'a>(s: RStr) -> &'a str {
    // SAFETY: the module promises a readable string for the call.
    unsafe { s.as_str() }.unwrap_or("")
}

/// # Safety
/// `out` valid for the call, or null.
unsafe fn write_out(out: *mut OutBuf, bytes: &[u8]) {
    if !out.is_null() {
        // SAFETY: non-null and valid for the call (module's promise).
        unsafe { (*out).push(bytes) }
    }
}

/// # Safety
/// `out` valid for the call, or null.
unsafe fn write_error(out: *mut OutBuf, text: &str) -> u32 {
    // SAFETY: as the function's contract.
    unsafe { write_out(out, text.as_bytes()) };
    Status::Error as u32
}

/// # Safety
/// `slot` valid for a write for the call, or null.
unsafe fn write_u64(slot: *mut u64, value: u64) {
    if !slot.is_null() {
        // SAFETY: non-null and valid for the call (module's promise).
        unsafe { *slot = value }
    }
}

/// A reason given as text, as Erlang's atoms read.
fn exit_reason(text: &str) -> ExitReason {
    match text {
        "normal" => ExitReason::Normal,
        "shutdown" => ExitReason::Shutdown,
        "kill" => ExitReason::Kill,
        "killed" => ExitReason::Killed,
        "noproc" => ExitReason::NoProc,
        other => ExitReason::error(other),
    }
}

/// Resolves `host:port` (a name may be looked up).
fn socket_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    match std::net::ToSocketAddrs::to_socket_addrs(text).map(|mut addrs| addrs.next()) {
        Ok(Some(addr)) => Ok(addr),
        Ok(None) => Err(format!("{text:?} names no address")),
        Err(error) => Err(format!("{text:?} is not an address (expected host:port): {error}")),
    }
}

unsafe extern "C" fn host_self_pid(host: *mut c_void) -> u64 {
    // SAFETY: the module passes back the host handle of its callback.
    unsafe { with_host(host, 0, |h| h.pid().as_u64()) }
}

unsafe extern "C" fn host_send(host: *mut c_void, to: u64, kind: u32, msg: RBytes) -> u32 {
    // SAFETY: handle and bytes from the module's current callback.
    unsafe {
        with_host(host, Status::Error as u32, |h| {
            let Some(to) = Pid::from_u64(to) else { return Status::Error as u32 };
            match h.send(Dest::Pid(to), kind, bytes(msg).to_vec()) {
                Ok(()) => Status::Ok as u32,
                Err(_) => Status::Error as u32,
            }
        })
    }
}

unsafe extern "C" fn host_send_named(host: *mut c_void, name: RStr, kind: u32, msg: RBytes) -> u32 {
    // SAFETY: handle, name and bytes from the module's current callback.
    unsafe {
        with_host(host, Status::Error as u32, |h| {
            match h.send(text(name).into(), kind, bytes(msg).to_vec()) {
                Ok(()) => Status::Ok as u32,
                Err(_) => Status::Error as u32,
            }
        })
    }
}

unsafe extern "C" fn host_send_remote(
    host: *mut c_void,
    node: RStr,
    name: RStr,
    kind: u32,
    msg: RBytes,
    out: *mut OutBuf,
) -> u32 {
    // SAFETY: handle, strings, bytes and out buffer from the module's
    // current callback.
    unsafe {
        with_host(host, Status::Error as u32, |h| {
            let dest = Dest::Remote { name: text(name).into(), node: text(node).into() };
            if h.node().remote().is_none() {
                return write_error(
                    out,
                    "this node runs no Erlang distribution (start it with --name or --sname)",
                );
            }
            match h.send(dest, kind, bytes(msg).to_vec()) {
                Ok(()) => Status::Ok as u32,
                Err(error) => write_error(
                    out,
                    &format!("{error}: the message has no Erlang form or the node is unreachable"),
                ),
            }
        })
    }
}

unsafe extern "C" fn host_call(
    host: *mut c_void,
    to: u64,
    name: RStr,
    request: RBytes,
    timeout_ms: u64,
    out: *mut OutBuf,
) -> u32 {
    // SAFETY: handle, strings, bytes and out buffer from the module's
    // current callback.
    unsafe {
        with_host(host, Status::Error as u32, |h| {
            let request = Message::new(crate::module::Payload(bytes(request).to_vec()));
            let timeout = Duration::from_millis(timeout_ms);
            let name = text(name);
            let dest = if name.is_empty() {
                match Pid::from_u64(to) {
                    Some(pid) => Dest::Pid(pid),
                    None => return write_error(out, &format!("{to} is not a pid")),
                }
            } else {
                Dest::from(name)
            };
            let node = h.node();
            let result = match node.resolve(&dest) {
                Err(error) => Err(CallError::from(error)),
                Ok(pid) if pid == h.pid() => Err(CallError::CallingSelf(pid)),
                Ok(pid) => node.call(pid, request, timeout, h.worker()),
            };
            match result.map(|reply| reply.downcast::<crate::module::ModuleReply>()) {
                Ok(Ok(Ok(payload))) => {
                    write_out(out, &payload.0);
                    Status::Ok as u32
                }
                Ok(Ok(Err(error))) => write_error(out, &error),
                Ok(Err(_)) => {
                    write_error(out, "the process answered with a value that is not a module reply")
                }
                Err(error) => write_error(out, &error.to_string()),
            }
        })
    }
}

unsafe extern "C" fn host_spawn(
    host: *mut c_void,
    module: RStr,
    arg: RBytes,
    link: u32,
    pid_out: *mut u64,
    out: *mut OutBuf,
) -> u32 {
    // SAFETY: handle, string, bytes and out pointers from the module's
    // current callback.
    unsafe {
        with_host(host, Status::Error as u32, |h| {
            let Some(code_server) = h.node().code.get().cloned() else {
                return write_error(out, "this node has no code server");
            };
            let module = text(module);
            match code_server.module_process(module, bytes(arg).to_vec()) {
                Ok(actor) => {
                    let parent = (link != 0).then(|| h.pid());
                    match h.node().spawn_from(Box::new(actor), parent, h.sched()) {
                        Ok(pid) => {
                            write_u64(pid_out, pid.as_u64());
                            Status::Ok as u32
                        }
                        Err(error) => write_error(out, &error.to_string()),
                    }
                }
                Err(error) => write_error(out, &error.to_string()),
            }
        })
    }
}

unsafe extern "C" fn host_send_after(host: *mut c_void, to: u64, msg: RBytes, delay_ms: u64) -> u64 {
    // SAFETY: handle and bytes from the module's current callback.
    unsafe {
        with_host(host, 0, |h| {
            let Some(to) = Pid::from_u64(to) else { return 0 };
            let message = Message::new(crate::module::Payload(bytes(msg).to_vec()));
            h.node().send_after(to, message, Duration::from_millis(delay_ms)).0
        })
    }
}

unsafe extern "C" fn host_cancel_timer(host: *mut c_void, timer: u64) -> u32 {
    // SAFETY: handle from the module's current callback.
    unsafe { with_host(host, 0, |h| u32::from(h.node().timers.cancel(crate::pid::TimerRef(timer)))) }
}

unsafe extern "C" fn host_log(host: *mut c_void, level: u32, msg: RStr) {
    // SAFETY: handle and string from the module's current callback.
    unsafe {
        with_host(host, (), |h| {
            let (pid, msg) = (h.pid(), text(msg));
            match level {
                0 => tracing::error!(%pid, "{msg}"),
                1 => tracing::warn!(%pid, "{msg}"),
                2 => tracing::info!(%pid, "{msg}"),
                _ => tracing::debug!(%pid, "{msg}"),
            }
        })
    }
}

unsafe extern "C" fn host_stop(host: *mut c_void, reason: RStr) {
    // SAFETY: handle and string from the module's current callback.
    unsafe {
        with_host(host, (), |h| {
            h.stop = Some(match text(reason) {
                "normal" => ExitReason::Normal,
                "shutdown" => ExitReason::Shutdown,
                other => ExitReason::error(other),
            });
        })
    }
}

unsafe extern "C" fn host_listen(host: *mut c_void, addr: RStr, port_out: *mut u64, out: *mut OutBuf) -> u32 {
    // SAFETY: handle, string and out pointers from the module's current
    // callback.
    unsafe {
        with_host(host, Status::Error as u32, |h| {
            listen_for(h, text(addr), crate::port::ListenOpts::raw(), port_out, out)
        })
    }
}

unsafe extern "C" fn host_listen_with(
    host: *mut c_void,
    addr: RStr,
    opts: RBytes,
    port_out: *mut u64,
    out: *mut OutBuf,
) -> u32 {
    // SAFETY: handle, string, bytes and out pointers from the module's
    // current callback.
    unsafe {
        with_host(host, Status::Error as u32, |h| {
            let addr = text(addr);
            match module_listen_opts(bytes(opts)) {
                Ok(opts) => listen_for(h, addr, opts, port_out, out),
                Err(error) => write_error(out, &format!("cannot listen on {addr}: {error}")),
            }
        })
    }
}

unsafe extern "C" fn host_listen_set_options(
    host: *mut c_void,
    port: u64,
    opts: RBytes,
    out: *mut OutBuf,
) -> u32 {
    // SAFETY: handle, bytes and out pointers from the module's current
    // callback.
    unsafe {
        with_host(host, Status::Error as u32, |h| {
            let port = crate::port::PortId::from_u64(port);
            let changed = module_listen_opts(bytes(opts)).and_then(|opts| {
                h.node().ports.set_listen_opts(port, Some(h.pid()), opts).map_err(|e| e.to_string())
            });
            match changed {
                Ok(()) => Status::Ok as u32,
                Err(error) => {
                    write_error(out, &format!("cannot change the options of listener {port}: {error}"))
                }
            }
        })
    }
}

/// Blocks of at least this size come from their own mapping, given back to
/// the system the moment they are freed.
const MALLOC_MMAP_THRESHOLD: i32 = 1 << 20;
/// Free memory at the top of one of glibc's heaps beyond this goes back at
/// once.
const MALLOC_TRIM_THRESHOLD: i32 = 4 << 20;

/// Makes the process's allocator give memory back to the system as it is
/// freed, for a long-running node (the `relive` node process calls it at
/// start). glibc's default raises its mmap threshold after each large free,
/// up to 32 MiB, and its trim threshold with it to 64 MiB: after a client's
/// large request a node kept up to 64 MiB per thread arena that
/// `malloc_trim` (the top of a thread's heap is not trimmed by it) and
/// `Ctx::release_free_memory` could not return. Fixing both thresholds turns
/// that adjustment off. A no-op on other allocators.
pub fn return_freed_memory_promptly() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt has no preconditions: it sets glibc's tuning
    // parameters under the allocator's own lock, and both values are in
    // the ranges glibc accepts (it ignores the call otherwise).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD);
    }
}

unsafe extern "C" fn host_release_free_memory(_host: *mut c_void) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions: it only returns free pages
    // of glibc's arenas to the kernel, under the allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Opens a listener owned by the calling module process.
///
/// # Safety
/// `port_out` and `out` are the module's pointers for this call.
unsafe fn listen_for(
    h: &mut HostCall<'_, '_>,
    addr: &str,
    opts: crate::port::ListenOpts,
    port_out: *mut u64,
    out: *mut OutBuf,
) -> u32 {
    let addr = match socket_addr(addr) {
        Ok(addr) => addr,
        // SAFETY: the module's out buffer, valid for the call.
        Err(error) => return unsafe { write_error(out, &error) },
    };
    let node = h.node();
    match node.ports.listen(node, addr, h.pid(), opts) {
        Ok(info) => {
            // SAFETY: the module's out pointers, valid for the call.
            unsafe {
                write_u64(port_out, info.port.as_u64());
                write_out(out, info.local_addr.to_string().as_bytes());
            }
            Status::Ok as u32
        }
        // SAFETY: the module's out buffer, valid for the call.
        Err(error) => unsafe { write_error(out, &error.to_string()) },
    }
}

/// The runtime's listener options for a module's [`relive_abi::ListenOptions`]
/// (MessagePack, see `HostVtable::listen_with`): raw framing, every option
/// that is set applied, the others at the runtime's defaults.
fn module_listen_opts(bytes: &[u8]) -> Result<crate::port::ListenOpts, String> {
    let options: relive_abi::ListenOptions = rmp_serde::from_slice(bytes)
        .map_err(|e| format!("bad listen options ({e}); is the module built against a newer relive-abi?"))?;
    let mut opts = crate::port::ListenOpts::raw();
    match options.max_connections {
        Some(0) => return Err("max_connections is 0: give at least 1 (or none for no cap)".into()),
        Some(max) => opts.max_connections = Some(max as usize),
        None => {}
    }
    opts.refusal = options.refusal.unwrap_or_default();
    match options.idle_timeout {
        Some(timeout) if timeout.is_zero() => {
            return Err("idle_timeout is 0: give a positive duration (or none for no timeout)".into());
        }
        timeout => opts.limits.idle_timeout = timeout,
    }
    let size = |name: &str, value: u64| {
        usize::try_from(value)
            .map_err(|_| format!("{name} {value} does not fit this machine's address space"))
    };
    if let Some(max) = options.max_buffered_bytes {
        opts.limits.max_buffered_bytes = size("max_buffered_bytes", max)?;
    }
    if let Some(max) = options.max_unhandled_bytes {
        opts.limits.max_unhandled_bytes = size("max_unhandled_bytes", max)?;
    }
    Ok(opts)
}

unsafe extern "C" fn host_port_send(host: *mut c_void, port: u64, msg: RBytes) -> u32 {
    // SAFETY: handle and bytes from the module's current callback.
    unsafe {
        with_host(host, Status::Error as u32, |h| {
            match h
                .node()
                .ports
                .send(crate::port::PortId::from_u64(port), std::borrow::Cow::Borrowed(bytes(msg)))
            {
                Ok(()) => Status::Ok as u32,
                Err(error) => {
                    tracing::debug!(pid = %h.pid(), %error, "port_send failed");
                    Status::Error as u32
                }
            }
        })
    }
}

unsafe extern "C" fn host_port_close(host: *mut c_void, port: u64) -> u32 {
    // SAFETY: handle from the module's current callback.
    unsafe {
        with_host(host, Status::Error as u32, |h| {
            match h.node().ports.close(h.node(), crate::port::PortId::from_u64(port)) {
                Ok(()) => Status::Ok as u32,
                Err(_) => Status::Error as u32,
            }
        })
    }
}

unsafe extern "C" fn host_link(host: *mut c_void, pid: u64, out: *mut OutBuf) -> u32 {
    // SAFETY: handle and out buffer from the module's current callback.
    unsafe {
        with_host(host, Status::Error as u32, |h| {
            let Some(other) = Pid::from_u64(pid) else {
                return write_error(out, &format!("cannot link to {pid}: it is not a pid"));
            };
            match h.node().link(h.pid(), other, h.sched()) {
                Ok(()) => Status::Ok as u32,
                Err(error) => write_error(out, &error.to_string()),
            }
        })
    }
}

unsafe extern "C" fn host_unlink(host: *mut c_void, pid: u64) {
    // SAFETY: handle from the module's current callback.
    unsafe {
        with_host(host, (), |h| {
            if let Some(other) = Pid::from_u64(pid) {
                h.node().unlink(h.pid(), other);
            }
        })
    }
}

unsafe extern "C" fn host_monitor(host: *mut c_void, pid: u64) -> u64 {
    // SAFETY: handle from the module's current callback.
    unsafe {
        with_host(host, 0, |h| {
            // A number that is not a pid names no process, and no process
            // could ever exit as it: there is nothing to report down.
            let Some(target) = Pid::from_u64(pid) else { return 0 };
            h.node().monitor(Watcher::Process(h.pid()), target, h.sched()).id
        })
    }
}

unsafe extern "C" fn host_demonitor(host: *mut c_void, monitor: u64, pid: u64) -> u32 {
    // SAFETY: handle from the module's current callback.
    unsafe {
        with_host(host, 0, |h| {
            let Some(target) = Pid::from_u64(pid) else { return 0 };
            u32::from(h.node().demonitor(Some(h.pid()), MonitorRef { id: monitor, target }))
        })
    }
}

unsafe extern "C" fn host_trap_exit(host: *mut c_void, on: u32) -> u32 {
    // SAFETY: handle from the module's current callback.
    unsafe { with_host(host, 0, |h| u32::from(h.node().set_trap_exit(h.pid(), on != 0))) }
}

unsafe extern "C" fn host_register(host: *mut c_void, name: RStr, out: *mut OutBuf) -> u32 {
    // SAFETY: handle, string and out buffer from the module's current
    // callback.
    unsafe {
        with_host(host, Status::Error as u32, |h| {
            let name = text(name);
            if name.is_empty() {
                return write_error(out, "cannot register an empty name");
            }
            match h.node().register(name.into(), h.pid()) {
                Ok(()) => Status::Ok as u32,
                Err(error) => write_error(out, &error.to_string()),
            }
        })
    }
}

unsafe extern "C" fn host_unregister(host: *mut c_void, name: RStr) -> u32 {
    // SAFETY: handle and string from the module's current callback.
    unsafe { with_host(host, 0, |h| u32::from(h.node().unregister(text(name)))) }
}

unsafe extern "C" fn host_whereis(host: *mut c_void, name: RStr, pid_out: *mut u64) -> u32 {
    // SAFETY: handle, string and out pointer from the module's current
    // callback.
    unsafe {
        with_host(host, 0, |h| match h.node().whereis(text(name)) {
            Some(pid) => {
                write_u64(pid_out, pid.as_u64());
                1
            }
            None => 0,
        })
    }
}

unsafe extern "C" fn host_exit(host: *mut c_void, pid: u64, reason: RStr) {
    // SAFETY: handle and string from the module's current callback.
    unsafe {
        with_host(host, (), |h| {
            if let Some(target) = Pid::from_u64(pid) {
                h.node().signal_exit(target, h.pid(), exit_reason(text(reason)), h.sched());
            }
        })
    }
}

unsafe extern "C" fn host_defer_reply(host: *mut c_void, token_out: *mut u64, out: *mut OutBuf) -> u32 {
    // SAFETY: handle and out pointers from the module's current callback.
    unsafe {
        with_host(host, Status::Error as u32, |h| match h.call.take() {
            Some(reply) => {
                write_u64(token_out, h.replies.defer(reply));
                Status::Ok as u32
            }
            None => write_error(
                out,
                "defer_reply works only inside handle_call, once per call: there is no call to defer here",
            ),
        })
    }
}

unsafe extern "C" fn host_reply(
    host: *mut c_void,
    owner: u64,
    token: u64,
    reply: RBytes,
    out: *mut OutBuf,
) -> u32 {
    // SAFETY: handle, bytes and out buffer from the module's current
    // callback.
    unsafe {
        with_host(host, Status::Error as u32, |h| {
            let me = h.pid();
            if owner != me.as_u64() {
                let owner = Pid::from_u64(owner).map_or_else(|| owner.to_string(), |pid| pid.to_string());
                return write_error(
                    out,
                    &format!(
                        "reply token {token} belongs to process {owner}, not {me}: only the process that deferred a call can answer it"
                    ),
                );
            }
            match h.replies.take(token, me) {
                Ok(waiting) => {
                    let payload = crate::module::Payload(bytes(reply).to_vec());
                    waiting.reply_with::<crate::module::ModuleReply>(Ok(payload));
                    Status::Ok as u32
                }
                Err(error) => write_error(out, &error),
            }
        })
    }
}

unsafe extern "C" fn host_connect(
    host: *mut c_void,
    addr: RStr,
    timeout_ms: u64,
    port_out: *mut u64,
    out: *mut OutBuf,
) -> u32 {
    // SAFETY: handle, string and out pointers from the module's current
    // callback.
    unsafe {
        with_host(host, Status::Error as u32, |h| {
            let addr = match socket_addr(text(addr)) {
                Ok(addr) => addr,
                Err(error) => return write_error(out, &error),
            };
            let node = h.node();
            let opts = crate::port::ConnectOpts::raw();
            match node.ports.connect(node, addr, h.pid(), opts, Duration::from_millis(timeout_ms)) {
                Ok(port) => {
                    write_u64(port_out, port.as_u64());
                    Status::Ok as u32
                }
                Err(error) => write_error(out, &error.to_string()),
            }
        })
    }
}

unsafe extern "C" fn host_port_set_owner(host: *mut c_void, port: u64, pid: u64, out: *mut OutBuf) -> u32 {
    // SAFETY: handle and out buffer from the module's current callback.
    unsafe {
        with_host(host, Status::Error as u32, |h| {
            let Some(to) = Pid::from_u64(pid) else {
                return write_error(out, &format!("cannot give a port to {pid}: it is not a pid"));
            };
            let port = crate::port::PortId::from_u64(port);
            match h.node().ports.hand_over(h.node(), port, Some(h.pid()), to) {
                Ok(()) => Status::Ok as u32,
                Err(error) => write_error(out, &error.to_string()),
            }
        })
    }
}

unsafe extern "C" fn host_config(host: *mut c_void, out: *mut OutBuf) -> u32 {
    // SAFETY: handle and out buffer from the module's current callback.
    unsafe {
        with_host(host, Status::Error as u32, |h| {
            let config = h.node().config();
            write_out(out, &config.0);
            Status::Ok as u32
        })
    }
}
