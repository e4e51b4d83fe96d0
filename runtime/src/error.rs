//! Errors of the runtime API. Each says what failed and, where there is
//! one, what to do about it.

use std::sync::Arc;
use std::time::Duration;

use crate::pid::{ExitReason, Pid};

/// Why a message was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The pid names no live process (Erlang: the message is dropped).
    #[error("no process {0}: it has exited; the message was dropped")]
    NoProc(Pid),
    /// No process is registered under the name.
    #[error("no process is registered as {0:?}")]
    NotRegistered(Arc<str>),
}

/// Why a call got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The target is not alive.
    #[error("call to {0} failed: no such process (it has exited)")]
    NoProc(Pid),
    /// No process is registered under the name.
    #[error("call failed: no process is registered as {0:?}")]
    NotRegistered(Arc<str>),
    /// No reply within the timeout; a late reply will be discarded.
    #[error("call timed out after {1:?} waiting for {0} to reply; a late reply will be discarded")]
    Timeout(Pid, Duration),
    /// The callee exited before replying.
    #[error("call to {0} failed: the process exited ({1}) before replying")]
    Exited(Pid, ExitReason),
    /// The callee's handler panicked while handling the request.
    #[error("call to {0} failed: the process crashed while handling the request")]
    Crashed(Pid),
    /// The callee dropped the request without replying.
    #[error("call to {0} failed: the process does not answer this request")]
    NoReply(Pid),
    /// A process called itself, which could only time out.
    #[error("process {0} called itself; that would deadlock")]
    CallingSelf(Pid),
}

impl From<SendError> for CallError {
    fn from(err: SendError) -> CallError {
        match err {
            SendError::NoProc(pid) => CallError::NoProc(pid),
            SendError::NotRegistered(name) => CallError::NotRegistered(name),
        }
    }
}

/// Why a module process's `config_change` did not accept a configuration
/// ([`crate::Node::config_change`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigChangeError {
    /// The process is not alive (or exited before it ran the callback).
    #[error("cannot tell {0} of the new configuration: no such process (it has exited)")]
    NoProc(Pid),
    /// Only module processes have a `config_change` callback.
    #[error("{0} is not a module process; only module processes have config_change")]
    NotAModuleProcess(Pid),
    /// The callback returned an error or panicked: the configuration is
    /// refused.
    #[error("{pid} ({module} {version}) refused the new configuration: {error}")]
    Refused {
        /// The process.
        pid: Pid,
        /// Its module.
        module: String,
        /// The version it runs.
        version: semver::Version,
        /// The module's error or panic.
        error: crate::loader::ModuleError,
    },
    /// The process did not get to the callback, or the callback did not
    /// return, in time.
    #[error("config_change of {pid}: {error}")]
    Task {
        /// The process.
        pid: Pid,
        /// What went wrong.
        error: crate::system::TaskError,
    },
}

/// Why a process was not started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpawnError {
    /// The process table is full.
    #[error(
        "cannot spawn: the node already runs its maximum of {0} processes (raise NodeConfig::max_processes)"
    )]
    TooManyProcesses(usize),
    /// `init` failed or panicked; the process has exited with this reason.
    #[error("process {0} failed to start: {1}")]
    InitFailed(Pid, ExitReason),
    /// `init` did not finish in time (the process keeps running).
    #[error("process {0} did not finish init within {1:?}")]
    Timeout(Pid, Duration),
    /// The node is shutting down.
    #[error("cannot spawn: the node is shutting down")]
    ShuttingDown,
    /// No such module is loaded (or the node has no code server).
    #[error("cannot spawn module {0:?}: it is not loaded")]
    UnknownModule(String),
}

/// Why a link was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The other process does not exist (a `noproc` exit signal was sent too).
    #[error("cannot link to {0}: no such process")]
    NoProc(Pid),
}

/// Why a name was not registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// Another process holds the name.
    #[error("name {name:?} is already registered to {holder}; unregister it first")]
    NameTaken {
        /// The name asked for.
        name: Arc<str>,
        /// Its current holder.
        holder: Pid,
    },
    /// The process already has a name (one per process, as in Erlang).
    #[error("{pid} is already registered as {name:?}")]
    AlreadyNamed {
        /// The process.
        pid: Pid,
        /// Its current name.
        name: Arc<str>,
    },
    /// The process is not alive.
    #[error("cannot register {0}: no such process")]
    NoProc(Pid),
}

/// Why a suspend or resume failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SuspendError {
    /// The process is not alive.
    #[error("no process {0}")]
    NoProc(Pid),
    /// It was already suspended.
    #[error("{0} is already suspended")]
    AlreadySuspended(Pid),
    /// It is not suspended.
    #[error("{0} is not suspended")]
    NotSuspended(Pid),
    /// Its running handler did not return in time; it was resumed.
    #[error("{0} did not finish its current handler within {1:?}; left running")]
    Timeout(Pid, Duration),
    /// The function given to `with_suspended` panicked (the process keeps
    /// its actor and stays suspended).
    #[error("inspecting suspended process {0} panicked: {1}")]
    Panicked(Pid, String),
    /// A process tried to suspend itself.
    #[error("{0} cannot suspend itself")]
    SuspendingSelf(Pid),
}

/// Why a library was not loaded. Each names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read or copied.
    #[error("library {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not an ELF shared library at all.
    #[error(
        "{path} is not a shared library (no ELF header): build the module crate with crate-type = [\"cdylib\"] and load the .so"
    )]
    NotALibrary {
        /// The file.
        path: std::path::PathBuf,
    },
    /// An ELF file that cannot be loaded safely: truncated, corrupt, or not
    /// a shared object for this machine. Checked before `dlopen`, which
    /// would otherwise map missing pages and crash the node.
    #[error("library {path} cannot be loaded: {detail} — rebuild the module or copy the file again")]
    Malformed {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// dlopen refused it (truncated, corrupt, wrong architecture, missing
    /// dependencies).
    #[error("library {path} could not be opened: {detail} — is the file complete? rebuild the module")]
    Open {
        /// The file.
        path: std::path::PathBuf,
        /// dlopen's message.
        detail: String,
    },
    /// The library does not export relive's entry point.
    #[error(
        "library {path} is not a relive module: it does not export {symbol} — add relive_abi::export_module!(YourState) to the crate"
    )]
    NoExport {
        /// The file.
        path: std::path::PathBuf,
        /// The missing symbol.
        symbol: &'static str,
    },
    /// The vtable does not start with relive's magic number.
    #[error(
        "library {path}: bad magic {found:#018x} (expected {:#018x}) — not built with relive-abi, or corrupt",
        relive_abi::MAGIC
    )]
    BadMagic {
        /// The file.
        path: std::path::PathBuf,
        /// The magic found.
        found: u64,
    },
    /// Built against another ABI version.
    #[error(
        "library {path} was built for module ABI {found}, but this node expects ABI {} — rebuild the module against relive-abi {} (module ABI {}; see relive-abi's MIGRATING.md)",
        relive_abi::ABI_VERSION,
        relive_abi::ABI_CRATE_VERSION,
        relive_abi::ABI_VERSION
    )]
    AbiMismatch {
        /// The file.
        path: std::path::PathBuf,
        /// Its ABI version.
        found: u32,
    },
    /// Its metadata is unusable.
    #[error("library {path}: {what}")]
    BadModule {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// Why the code server refused.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    /// The library is not a valid module.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A third version would be needed while processes still run the old one.
    #[error(
        "cannot load a new version of {module}: {processes} process(es) still run old version {version} ({}) — upgrade or purge them first",
        pid_list(.first, *.processes)
    )]
    OldCodeInUse {
        /// The module.
        module: String,
        /// Its old version.
        version: semver::Version,
        /// Processes on it.
        processes: usize,
        /// The first few of them, to name in the message.
        first: Vec<Pid>,
    },
    /// Another library with the same name and version is loaded.
    #[error(
        "library {path}: module {module} {version} is already loaded from a different library — bump the version"
    )]
    VersionClash {
        /// The file.
        path: std::path::PathBuf,
        /// The module.
        module: String,
        /// The version.
        version: semver::Version,
    },
    /// Same name and version, different state or message layout.
    #[error(
        "library {path}: module {module} {version} changes its state or message types without a version bump — bump the version"
    )]
    LayoutChanged {
        /// The file.
        path: std::path::PathBuf,
        /// The module.
        module: String,
        /// The version.
        version: semver::Version,
    },
    /// A version cannot be unloaded while processes run it.
    #[error("{module} {version} still runs {processes} process(es): move or stop them before unloading it")]
    StillRunning {
        /// The module.
        module: String,
        /// The version.
        version: semver::Version,
        /// Processes on it.
        processes: usize,
    },
    /// No such module (or no current version of it).
    #[error("no module named {0:?} is loaded")]
    UnknownModule(String),
    /// soft_purge with processes still on old code.
    #[error(
        "cannot soft-purge {module} {version}: processes {} still run it — upgrade them or use purge",
        pids_text(pids)
    )]
    ProcessesOnOldCode {
        /// The module.
        module: String,
        /// The old version.
        version: semver::Version,
        /// The processes on it.
        pids: Vec<Pid>,
    },
}

fn pids_text(pids: &[Pid]) -> String {
    pids.iter().map(Pid::to_string).collect::<Vec<_>>().join(", ")
}

/// Why moving a process to another version failed. The process is left on
/// its old code with its old state.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// It could not be suspended (gone, or busy past the timeout).
    #[error(transparent)]
    Suspend(#[from] SuspendError),
    /// The process does not run a module.
    #[error("{0} is not a module process")]
    NotAModuleProcess(Pid),
    /// It runs another module.
    #[error("{pid} runs module {runs}, not {expected}")]
    WrongModule {
        /// The process.
        pid: Pid,
        /// What it runs.
        runs: String,
        /// What was expected.
        expected: String,
    },
    /// No version to move to.
    #[error(transparent)]
    Code(#[from] CodeError),
    /// The running version could not export the state, or the target
    /// version's code_change (or the downgrade) refused it.
    #[error("{pid}: moving {module} {from} → {to} failed: {error}")]
    Migration {
        /// The process.
        pid: Pid,
        /// The module.
        module: String,
        /// The version it runs.
        from: semver::Version,
        /// The version it was to run.
        to: semver::Version,
        /// The module's error.
        error: crate::loader::ModuleError,
    },
}

/// Why a JSON call to a module process failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonCallError {
    /// The call itself failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The module refused the request (it did not decode, or the module
    /// reported an error).
    #[error("{0}")]
    Refused(String),
    /// The process is not a module process.
    #[error("the process answered with a value that is not a module reply: is it a module process?")]
    NotAModule,
    /// The JSON could not be encoded.
    #[error("{0}")]
    Encode(String),
    /// The reply could not be read as JSON.
    #[error("{0}")]
    Decode(String),
}

/// `<0.5.1>, <0.9.1> and 3 more`.
fn pid_list(first: &[Pid], total: usize) -> String {
    let mut text = first.iter().map(Pid::to_string).collect::<Vec<_>>().join(", ");
    if total > first.len() {
        text.push_str(&format!(" and {} more", total - first.len()));
    }
    text
}
