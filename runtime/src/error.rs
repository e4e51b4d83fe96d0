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
    #[error("call to {0} timed out after {1:?}; a late reply will be discarded")]
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
