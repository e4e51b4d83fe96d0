//! Supervisors: processes that start other processes, watch them and
//! restart them when they fail, with the semantics of OTP's `supervisor`.
//!
//! A supervisor is an ordinary [`Actor`] ([`Supervisor`]) built from a
//! [`SupervisorSpec`]: a restart strategy, a restart intensity, and the
//! [`ChildSpec`]s of its children. Start one with [`start`] (from outside
//! any process) or [`start_link`] (from a process, which becomes its
//! parent), or nest one under another supervisor with
//! [`ChildSpec::supervisor`]. Query and change it with the functions of this
//! module ([`which_children`], [`start_child`], [`terminate_child`], ...),
//! from a thread (`&Node`) or a handler (`&Ctx`).
//!
//! # Starting
//!
//! `init` turns on exit trapping, then starts the children one by one in
//! spec order, each with [`Ctx::spawn_link_sync`]: a child's `init` has
//! finished before the next child starts. If a child fails to start, the
//! children already started are stopped (last started first) and the
//! supervisor's own `init` fails with `child "<id>" failed to start: <reason>`,
//! so [`start`] returns [`SpawnError::InitFailed`] naming the child.
//!
//! # Strategies
//!
//! When a child exits and must be restarted (see [`Restart`]):
//! - [`Strategy::OneForOne`]: only that child is restarted.
//! - [`Strategy::OneForAll`]: every other child is stopped (last started
//!   first), then all are started again in spec order.
//! - [`Strategy::RestForOne`]: the children started after it are stopped
//!   (last first), then it and they are started again in order; the ones
//!   started before it are untouched.
//! - [`Strategy::SimpleOneForOne`]: the spec holds one template; children
//!   are added at run time by [`start_dynamic_child`], whose argument is
//!   handed to the template's start function, and kept for restarts. Each
//!   is restarted on its own, as in one_for_one.
//!
//! In a group restart, temporary siblings are stopped and forgotten, and
//! every other child of the group is started again, including one that had
//! been stopped with [`terminate_child`] or had ended cleanly (OTP does
//! the same). A child whose restart fails is marked `restarting` and the
//! supervisor retries through its own mailbox, so calls are still served
//! between two attempts; every attempt counts toward the intensity.
//!
//! # Intensity
//!
//! At most [`SupervisorSpec::intensity`] restarts may happen within any
//! [`SupervisorSpec::period`]. The restart that would exceed it is not made:
//! the supervisor logs an error, stops all its children (last started
//! first) and exits with [`ExitReason::Shutdown`]. Its parent sees that exit
//! like any child's and applies its own strategy and intensity, so a restart
//! storm climbs the tree one level at a time until some supervisor's
//! intensity absorbs it, or the root gives up.
//!
//! # Shutdown protocol
//!
//! Stopping a child (on [`terminate_child`], in a group restart, or when the
//! supervisor itself stops) follows its [`Shutdown`]:
//! - [`Shutdown::Timeout`]: an exit signal `shutdown`, then a wait of at
//!   most that long for the child to exit; a child still alive then (one
//!   that traps exits and does not stop) is sent `kill`.
//! - [`Shutdown::BrutalKill`]: `kill` at once.
//! - [`Shutdown::Infinity`]: `shutdown`, then wait as long as it takes (the
//!   default for supervisor children, which stop their own children first).
//!
//! The wait blocks the supervisor's worker (the scheduler's watchdog lends
//! the node a replacement worker meanwhile). The children of a
//! simple_one_for_one supervisor are stopped together: all are signalled,
//! then waited for.
//!
//! A child's exit reaches the supervisor as an [`Exit`] message. Children
//! are found by pid, and a child stopped on purpose has its pid cleared
//! before its `Exit` arrives, so that late `Exit` matches no child and is
//! ignored: stopping a child never triggers a restart. An `Exit` from the
//! parent (the process that spawned the supervisor linked, or
//! [`Pid::NODE`], i.e. [`Node::exit`]) stops all children and ends the
//! supervisor with the same reason. `Exit`s from any other process are
//! ignored, as OTP does.
//!
//! # Changing a running supervisor (upgrades)
//!
//! As OTP's `supervisor:code_change`, a live upgrade changes what a
//! supervisor *will* do without touching what runs:
//! [`replace_child_spec`] swaps the stored spec of a child (or the template
//! of a simple_one_for_one supervisor) and returns the one it replaced; the
//! running child is not restarted, the new spec applies at its next
//! (re)start. Its restart count stays. [`change_flags`] sets the strategy,
//! intensity and period (the restarts already counted stay in the window);
//! a change to or from simple_one_for_one is refused, since the children
//! are kept differently: such a supervisor is stopped and started again.
//! [`child_spec`] reads a stored spec back (to keep it before a change).
//!
//! # Calls from modules
//!
//! A module process can only send MessagePack (a [`Payload`]) and expects a
//! [`ModuleReply`], so a supervisor also answers these calls, from a
//! module's `ctx.call_named(sup, ..)` or a node's `call_json` alike:
//! - `{"start_child": ARGS}`: on a simple_one_for_one supervisor, starts a
//!   child from its template with `ARGS` (handed to the template's start
//!   function as a [`Payload`]); answers `{"pid": PID}` (the 64-bit pid
//!   modules use);
//! - `{"terminate_child": PID}`: stops that child (any strategy); answers
//!   nil;
//! - `"which_children"`: answers a list of `{"id", "pid" (or nil),
//!   "supervisor", "restarting", "restarts"}`.
//!
//! Anything else, and every failure, is answered with an error text naming
//! what went wrong, never a panic. The start runs inside the call: the
//! caller waits for the child's `init` (as OTP's `supervisor:start_child`),
//! so a child must not call back the module that is starting it in its
//! `init`, or both wait until the call times out.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ctx::Ctx;
use crate::error::{CallError, SpawnError};
use crate::message::{Exit, Message, ReplyTo};
use crate::module::{ModuleReply, Payload};
use crate::node::{Dest, Node, panic_message};
use crate::pid::{ExitReason, Pid};
use crate::process::Actor;

/// How long `init` of a child may take, unless its spec says otherwise.
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a worker child gets to stop after `shutdown` (OTP's 5000 ms).
const DEFAULT_WORKER_SHUTDOWN: Duration = Duration::from_secs(5);
/// How long to wait for a killed child to be gone. Kill takes effect at the
/// child's next step, so only a handler blocked in a call or a sleep makes
/// this wait matter.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// What a supervisor does when a child must be restarted. Serialized
/// (upgrade plans) by its OTP name, `one_for_one` ….
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Restart only the child that exited.
    #[default]
    OneForOne,
    /// Stop all other children, then restart all of them.
    OneForAll,
    /// Restart the child that exited and those started after it.
    RestForOne,
    /// One template; children added at run time, each restarted alone.
    SimpleOneForOne,
}

impl Strategy {
    /// Its OTP name: `one_for_one`, `one_for_all`, `rest_for_one`,
    /// `simple_one_for_one`.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::OneForOne => "one_for_one",
            Strategy::OneForAll => "one_for_all",
            Strategy::RestForOne => "rest_for_one",
            Strategy::SimpleOneForOne => "simple_one_for_one",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a supervisor does when children exit (OTP's `sup_flags`): read
/// with [`flags`], changed live with [`change_flags`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flags {
    /// How children are restarted.
    pub strategy: Strategy,
    /// Most restarts within `period`.
    pub intensity: u32,
    /// The window of `intensity`.
    pub period: Duration,
}

/// When a child that exited is restarted. Serialized (upgrade plans) by
/// its OTP name, `permanent` ….
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Restart {
    /// Always.
    #[default]
    Permanent,
    /// Only if it exited with a reason that is not
    /// [`ExitReason::is_clean`] (not `normal` or `shutdown`).
    Transient,
    /// Never; its spec is forgotten once it exits.
    Temporary,
}

impl fmt::Display for Restart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Restart::Permanent => "permanent",
            Restart::Transient => "transient",
            Restart::Temporary => "temporary",
        })
    }
}

/// How a child is stopped (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shutdown {
    /// Kill it at once.
    BrutalKill,
    /// Ask it to stop with `shutdown`, kill it if it is still alive after
    /// this long.
    Timeout(Duration),
    /// Ask it to stop with `shutdown` and wait for it, however long.
    Infinity,
}

/// Whether a child is a worker or a supervisor (reported by
/// [`which_children`] and counted by [`count_children`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChildType {
    /// Any process that is not a supervisor.
    Worker,
    /// A supervisor.
    Supervisor,
}

/// Builds the actor of a child for each start and restart. It gets the
/// argument given to [`start_dynamic_child`] (simple_one_for_one), or `()`
/// for the children of other strategies.
pub type StartFn = Arc<dyn Fn(&Message) -> Box<dyn Actor> + Send + Sync>;

/// How to start, restart and stop one child (OTP's child spec).
///
/// Build one with [`ChildSpec::worker`], [`ChildSpec::with_args`] or
/// [`ChildSpec::supervisor`], then adjust the public fields, e.g.
/// `ChildSpec { restart: Restart::Transient, ..ChildSpec::worker("db", start) }`.
#[derive(Clone)]
pub struct ChildSpec {
    /// Names the child within its supervisor; unique among its siblings.
    pub id: Arc<str>,
    /// Builds a fresh actor for every start; its `init` runs in the new
    /// process. A panic here counts as a failed start.
    pub start: StartFn,
    /// When the child is restarted. Default: permanent.
    pub restart: Restart,
    /// How the child is stopped. Default: 5 s for a worker, infinity for a
    /// supervisor.
    pub shutdown: Shutdown,
    /// Worker or supervisor.
    pub child_type: ChildType,
    /// How long the child's `init` may take; past it the start has failed
    /// (and the process is killed). Default: 5 s for a worker; for a
    /// supervisor, the sum of its children's.
    pub start_timeout: Duration,
    /// The name the child is registered under on every start, restarts
    /// included (OTP's `{local, Name}`); a start fails while another
    /// process holds the name. Default: none.
    pub name: Option<Arc<str>>,
}

impl ChildSpec {
    /// A permanent worker whose actor `start` builds.
    pub fn worker<F>(id: impl Into<Arc<str>>, start: F) -> ChildSpec
    where
        F: Fn() -> Box<dyn Actor> + Send + Sync + 'static,
    {
        ChildSpec::with_args(id, move |_: &Message| start())
    }

    /// A permanent worker whose start function takes an argument: the
    /// template of a simple_one_for_one supervisor, which passes it what
    /// [`start_dynamic_child`] was given (the same value again on each
    /// restart, so take what you need by reference or clone).
    pub fn with_args<F>(id: impl Into<Arc<str>>, start: F) -> ChildSpec
    where
        F: Fn(&Message) -> Box<dyn Actor> + Send + Sync + 'static,
    {
        ChildSpec {
            id: id.into(),
            start: Arc::new(start),
            restart: Restart::Permanent,
            shutdown: Shutdown::Timeout(DEFAULT_WORKER_SHUTDOWN),
            child_type: ChildType::Worker,
            start_timeout: DEFAULT_START_TIMEOUT,
            name: None,
        }
    }

    /// This spec, with its child registered as `name` on every start.
    pub fn registered(self, name: impl Into<Arc<str>>) -> ChildSpec {
        ChildSpec { name: Some(name.into()), ..self }
    }

    /// A permanent child that is itself a supervisor, built from `spec` on
    /// every start; stopped with [`Shutdown::Infinity`] so that it can stop
    /// its own children.
    pub fn supervisor(id: impl Into<Arc<str>>, spec: SupervisorSpec) -> ChildSpec {
        let start_timeout = spec.start_timeout();
        ChildSpec {
            shutdown: Shutdown::Infinity,
            child_type: ChildType::Supervisor,
            start_timeout,
            ..ChildSpec::with_args(id, move |_: &Message| Box::new(Supervisor::new(spec.clone())))
        }
    }
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .field("child_type", &self.child_type)
            .field("start_timeout", &self.start_timeout)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What a supervisor does and whom it starts.
#[derive(Clone, Debug)]
pub struct SupervisorSpec {
    /// How children are restarted.
    pub strategy: Strategy,
    /// Most restarts allowed within [`SupervisorSpec::period`]; one more
    /// and the supervisor gives up (OTP's `intensity`). Default 1.
    pub intensity: u32,
    /// The sliding window of [`SupervisorSpec::intensity`]. Default 5 s.
    pub period: Duration,
    /// The children, started in this order. For
    /// [`Strategy::SimpleOneForOne`], exactly one: the template.
    pub children: Vec<ChildSpec>,
    /// A name to register the supervisor under, if any.
    pub name: Option<Arc<str>>,
}

impl SupervisorSpec {
    /// A spec with OTP's default intensity (1 restart in 5 s), no name.
    pub fn new(strategy: Strategy, children: Vec<ChildSpec>) -> SupervisorSpec {
        SupervisorSpec { strategy, intensity: 1, period: Duration::from_secs(5), children, name: None }
    }

    /// Its strategy, intensity and period.
    pub fn flags(&self) -> Flags {
        Flags { strategy: self.strategy, intensity: self.intensity, period: self.period }
    }

    /// What `init` may take: the children start one after the other.
    fn start_timeout(&self) -> Duration {
        let children =
            self.children.iter().fold(Duration::ZERO, |sum, c| sum.saturating_add(c.start_timeout));
        children.saturating_add(Duration::from_secs(1))
    }

    /// Why this spec cannot run, if it cannot.
    fn check(&self) -> Result<(), String> {
        if self.strategy == Strategy::SimpleOneForOne && self.children.len() != 1 {
            return Err(format!(
                "a simple_one_for_one supervisor needs exactly one child spec (its template), got {}",
                self.children.len()
            ));
        }
        // A set, not a scan of the earlier ones: a release may start tens
        // of thousands of children (with the scan, 40,000 took 4.9 s to
        // start; with the set, 54 ms).
        let mut ids = HashSet::with_capacity(self.children.len());
        for child in &self.children {
            if !ids.insert(&*child.id) {
                return Err(format!("two child specs have the id {:?}; ids must be unique", child.id));
            }
        }
        Ok(())
    }
}

/// One child, as [`which_children`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildInfo {
    /// Its spec's id (the template's, for simple_one_for_one children).
    pub id: Arc<str>,
    /// Its process, or `None` while it is not running.
    pub pid: Option<Pid>,
    /// Worker or supervisor.
    pub child_type: ChildType,
    /// Its restart failed and the supervisor is trying again.
    pub restarting: bool,
    /// How many times this supervisor restarted it. A child in a crash loop
    /// is nearly always running when asked, so `pid` alone makes it look
    /// healthy; this count is what a status report shows instead. Every
    /// successful start made by the restart logic counts: after the child's
    /// own exit (as its [`Restart`] demands), in a group restart
    /// of one_for_all or rest_for_one (a sibling restarted with the group
    /// counts too, even one that was not running), and on a retry that
    /// succeeds (failed attempts do not). The first start and the starts
    /// asked for ([`start_child`], [`restart_child`]) do not count. The
    /// count lives with the spec: [`terminate_child`] keeps it,
    /// [`delete_child`] forgets it; a simple_one_for_one child has its own,
    /// forgotten with it.
    pub restarts: u64,
}

/// Numbers of children, as [`count_children`] reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChildCounts {
    /// Child specs (for simple_one_for_one: children).
    pub specs: usize,
    /// Children running now.
    pub active: usize,
    /// Specs of supervisors.
    pub supervisors: usize,
    /// Specs of workers.
    pub workers: usize,
}

/// Names a child for [`terminate_child`]: by id, or by pid (the only way
/// for simple_one_for_one children, which share their template's id).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ChildRef {
    /// The child with this spec id.
    Id(Arc<str>),
    /// The child running as this process.
    Pid(Pid),
}

impl From<&str> for ChildRef {
    fn from(id: &str) -> ChildRef {
        ChildRef::Id(id.into())
    }
}

impl From<String> for ChildRef {
    fn from(id: String) -> ChildRef {
        ChildRef::Id(id.into())
    }
}

impl From<Arc<str>> for ChildRef {
    fn from(id: Arc<str>) -> ChildRef {
        ChildRef::Id(id)
    }
}

impl From<Pid> for ChildRef {
    fn from(pid: Pid) -> ChildRef {
        ChildRef::Pid(pid)
    }
}

impl fmt::Display for ChildRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChildRef::Id(id) => write!(f, "{id:?}"),
            ChildRef::Pid(pid) => write!(f, "{pid}"),
        }
    }
}

/// Why a request to a supervisor failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupervisorError {
    /// The call itself failed (no such supervisor, timeout, ...).
    #[error(transparent)]
    Call(#[from] CallError),
    /// The supervisor has no such child.
    #[error("the supervisor has no child {0}; which_children lists its children")]
    NotFound(ChildRef),
    /// A spec with this id exists but is not running.
    #[error(
        "a child spec with id {0:?} already exists (not running); use restart_child, or delete_child first"
    )]
    AlreadyPresent(Arc<str>),
    /// A child with this id is running.
    #[error("child {id:?} is already running as {pid}")]
    AlreadyStarted {
        /// The id asked for.
        id: Arc<str>,
        /// The running child.
        pid: Pid,
    },
    /// The child is running; stop it first.
    #[error("child {0:?} is running; terminate_child it first")]
    Running(Arc<str>),
    /// The child's restart failed and the supervisor is retrying it.
    #[error("child {0:?} is being restarted by its supervisor; terminate_child it to stop the retries")]
    Restarting(Arc<str>),
    /// The child did not start: its start function panicked, its `init`
    /// failed or took longer than its `start_timeout`.
    #[error("child {id:?} failed to start: {reason}")]
    StartFailed {
        /// The child's id.
        id: Arc<str>,
        /// Why.
        reason: ExitReason,
    },
    /// The request does not apply to a simple_one_for_one supervisor.
    #[error("a simple_one_for_one supervisor does not support {0}")]
    SimpleOneForOne(&'static str),
    /// Only a simple_one_for_one supervisor starts children from arguments.
    #[error(
        "only a simple_one_for_one supervisor starts children from arguments; pass a ChildSpec to start_child"
    )]
    NotSimpleOneForOne,
    /// The process answered, but not as a supervisor does.
    #[error("{0:?} answered with something a supervisor does not send; is it a supervisor?")]
    NotASupervisor(Dest),
    /// A running supervisor cannot change to or from simple_one_for_one.
    #[error(
        "a running supervisor cannot change its strategy from {from} to {to} (simple_one_for_one keeps its children differently); stop it and start it again with the new strategy"
    )]
    StrategyChange {
        /// Its strategy.
        from: Strategy,
        /// The one asked for.
        to: Strategy,
    },
}

/// Who can query a supervisor: a [`Node`] (from any thread) or a [`Ctx`]
/// (from a handler). Sealed.
pub trait Caller: sealed::Sealed {
    /// Calls `to` with an already wrapped request.
    ///
    /// # Errors
    /// See [`CallError`].
    fn call_message(&self, to: Dest, request: Message, timeout: Duration) -> Result<Message, CallError>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::Node {}
    impl Sealed for crate::Ctx<'_> {}
}

impl Caller for Node {
    fn call_message(&self, to: Dest, request: Message, timeout: Duration) -> Result<Message, CallError> {
        self.call(to, request, timeout)
    }
}

impl Caller for Ctx<'_> {
    fn call_message(&self, to: Dest, request: Message, timeout: Duration) -> Result<Message, CallError> {
        self.call(to, request, timeout)
    }
}

/// Starts a supervisor that has no parent process (the node is its parent:
/// [`Node::exit`] stops it) and waits until all its children have started.
///
/// # Errors
/// [`SpawnError::InitFailed`] if a child failed to start (the reason names
/// the child), if the spec is invalid (a simple_one_for_one spec without
/// exactly one template, duplicate ids) or its name is taken; and as
/// [`Node::spawn_sync`].
pub fn start(node: &Node, spec: SupervisorSpec) -> Result<Pid, SpawnError> {
    let timeout = spec.start_timeout();
    node.spawn_sync(Supervisor::new(spec), timeout)
}

/// Starts a supervisor linked to the calling process, which becomes its
/// parent: if the caller exits, the supervisor stops its children and
/// exits with the same reason.
///
/// # Errors
/// As [`start`].
pub fn start_link(ctx: &Ctx<'_>, spec: SupervisorSpec) -> Result<Pid, SpawnError> {
    let timeout = spec.start_timeout();
    ctx.spawn_link_sync(Box::new(Supervisor::new(spec)), timeout)
}

/// The children of `sup`, in start order.
///
/// # Errors
/// [`SupervisorError::Call`], [`SupervisorError::NotASupervisor`].
pub fn which_children(
    caller: &dyn Caller,
    sup: impl Into<Dest>,
    timeout: Duration,
) -> Result<Vec<ChildInfo>, SupervisorError> {
    request(caller, sup.into(), Request::WhichChildren, timeout)
}

/// How many children `sup` has, of which kind and how many run.
///
/// # Errors
/// [`SupervisorError::Call`], [`SupervisorError::NotASupervisor`].
pub fn count_children(
    caller: &dyn Caller,
    sup: impl Into<Dest>,
    timeout: Duration,
) -> Result<ChildCounts, SupervisorError> {
    request(caller, sup.into(), Request::CountChildren, timeout)
}

/// Adds a child to `sup` and starts it (after the existing children).
///
/// # Errors
/// [`SupervisorError::AlreadyStarted`] or [`SupervisorError::AlreadyPresent`]
/// if its id is taken, [`SupervisorError::StartFailed`] (the spec is then
/// not kept), [`SupervisorError::SimpleOneForOne`], and the call errors.
pub fn start_child(
    caller: &dyn Caller,
    sup: impl Into<Dest>,
    spec: ChildSpec,
    timeout: Duration,
) -> Result<Pid, SupervisorError> {
    request::<Result<Pid, SupervisorError>>(caller, sup.into(), Request::StartChild(spec), timeout)?
}

/// Starts a child of a simple_one_for_one supervisor: its template's start
/// function gets `args` (as a [`Message`]; pass a `Message` to send one
/// as is), now and on every restart.
///
/// # Errors
/// [`SupervisorError::NotSimpleOneForOne`],
/// [`SupervisorError::StartFailed`], and the call errors.
pub fn start_dynamic_child<T: Any + Send>(
    caller: &dyn Caller,
    sup: impl Into<Dest>,
    args: T,
    timeout: Duration,
) -> Result<Pid, SupervisorError> {
    let args = crate::node::into_message(args);
    request::<Result<Pid, SupervisorError>>(caller, sup.into(), Request::StartDynamicChild(args), timeout)?
}

/// Stops a child (see the shutdown protocol in the module doc); its spec
/// is kept, so [`restart_child`] can start it again, except for a temporary
/// or simple_one_for_one child, which is forgotten. `timeout` must cover
/// the child's shutdown time.
///
/// # Errors
/// [`SupervisorError::NotFound`], [`SupervisorError::SimpleOneForOne`] for
/// an id (pass the pid), and the call errors.
pub fn terminate_child(
    caller: &dyn Caller,
    sup: impl Into<Dest>,
    child: impl Into<ChildRef>,
    timeout: Duration,
) -> Result<(), SupervisorError> {
    request::<Result<(), SupervisorError>>(
        caller,
        sup.into(),
        Request::TerminateChild(child.into()),
        timeout,
    )?
}

/// Starts again a child that was stopped with [`terminate_child`] or ended
/// cleanly. Does not count toward the restart intensity.
///
/// # Errors
/// [`SupervisorError::NotFound`], [`SupervisorError::Running`],
/// [`SupervisorError::Restarting`], [`SupervisorError::StartFailed`],
/// [`SupervisorError::SimpleOneForOne`], and the call errors.
pub fn restart_child(
    caller: &dyn Caller,
    sup: impl Into<Dest>,
    id: &str,
    timeout: Duration,
) -> Result<Pid, SupervisorError> {
    request::<Result<Pid, SupervisorError>>(caller, sup.into(), Request::RestartChild(id.into()), timeout)?
}

/// Forgets the spec of a child that is not running.
///
/// # Errors
/// [`SupervisorError::NotFound`], [`SupervisorError::Running`],
/// [`SupervisorError::Restarting`], [`SupervisorError::SimpleOneForOne`],
/// and the call errors.
pub fn delete_child(
    caller: &dyn Caller,
    sup: impl Into<Dest>,
    id: &str,
    timeout: Duration,
) -> Result<(), SupervisorError> {
    request::<Result<(), SupervisorError>>(caller, sup.into(), Request::DeleteChild(id.into()), timeout)?
}

/// The spec of child `id` as `sup` keeps it (for a simple_one_for_one
/// supervisor: its template, whose id it is).
///
/// # Errors
/// [`SupervisorError::NotFound`], and the call errors.
pub fn child_spec(
    caller: &dyn Caller,
    sup: impl Into<Dest>,
    id: &str,
    timeout: Duration,
) -> Result<ChildSpec, SupervisorError> {
    request::<Result<ChildSpec, SupervisorError>>(caller, sup.into(), Request::ChildSpec(id.into()), timeout)?
}

/// Replaces the stored spec of the child with `spec.id` (for a
/// simple_one_for_one supervisor: its template) and returns the spec it
/// replaced. The running child is not restarted: the new spec (start
/// function, restart, shutdown, ...) applies from its next (re)start, as
/// OTP's `supervisor:code_change` does. Its restart count stays.
///
/// # Errors
/// [`SupervisorError::NotFound`] if `sup` has no child (or template) with
/// that id, and the call errors.
pub fn replace_child_spec(
    caller: &dyn Caller,
    sup: impl Into<Dest>,
    spec: ChildSpec,
    timeout: Duration,
) -> Result<ChildSpec, SupervisorError> {
    request::<Result<ChildSpec, SupervisorError>>(
        caller,
        sup.into(),
        Request::ReplaceChildSpec(spec),
        timeout,
    )?
}

/// The strategy, intensity and period of `sup`.
///
/// # Errors
/// [`SupervisorError::Call`], [`SupervisorError::NotASupervisor`].
pub fn flags(caller: &dyn Caller, sup: impl Into<Dest>, timeout: Duration) -> Result<Flags, SupervisorError> {
    request(caller, sup.into(), Request::Flags, timeout)
}

/// Sets the strategy, intensity and period of a running supervisor and
/// returns the previous ones. Restarts already counted stay in the window;
/// the new intensity applies from the next restart.
///
/// # Errors
/// [`SupervisorError::StrategyChange`] to or from simple_one_for_one, and
/// the call errors.
pub fn change_flags(
    caller: &dyn Caller,
    sup: impl Into<Dest>,
    flags: Flags,
    timeout: Duration,
) -> Result<Flags, SupervisorError> {
    request::<Result<Flags, SupervisorError>>(caller, sup.into(), Request::ChangeFlags(flags), timeout)?
}

fn request<R: Any>(
    caller: &dyn Caller,
    sup: Dest,
    request: Request,
    timeout: Duration,
) -> Result<R, SupervisorError> {
    let reply = caller.call_message(sup.clone(), Message::new(request), timeout)?;
    reply.downcast::<R>().map_err(|_| SupervisorError::NotASupervisor(sup))
}

/// The calls a supervisor answers. Private, so only this module's helpers
/// can make them.
enum Request {
    WhichChildren,
    CountChildren,
    StartChild(ChildSpec),
    StartDynamicChild(Message),
    TerminateChild(ChildRef),
    RestartChild(Arc<str>),
    DeleteChild(Arc<str>),
    ChildSpec(Arc<str>),
    ReplaceChildSpec(ChildSpec),
    Flags,
    ChangeFlags(Flags),
}

/// A supervisor's note to itself: retry the restart that failed.
struct TryAgain(Key);

/// Which child to restart.
enum Key {
    Static(Arc<str>),
    Dynamic(u64),
}

/// The supervisor process (see the module doc). Build one with
/// [`Supervisor::new`] to spawn it yourself; [`start`], [`start_link`] and
/// [`ChildSpec::supervisor`] do it for you.
pub struct Supervisor {
    strategy: Strategy,
    intensity: u32,
    period: Duration,
    name: Option<Arc<str>>,
    /// Why the spec cannot run; `init` fails with it.
    invalid: Option<String>,
    children: Children,
    /// Who spawned this supervisor linked ([`Pid::NODE`] if nobody): an
    /// `Exit` from it stops the supervisor. Set in `init`.
    parent: Pid,
    /// When the restarts within the last period happened, oldest first.
    restarts: VecDeque<Instant>,
}

enum Children {
    /// In start order.
    Static(Vec<Child>),
    Dynamic(Dynamic),
}

struct Child {
    spec: ChildSpec,
    /// `None` while not running; cleared before the child is stopped on
    /// purpose, so its `Exit` is then ignored.
    pid: Option<Pid>,
    /// Its restart failed; a `TryAgain` is on its way.
    restarting: bool,
    /// Successful restarts ([`ChildInfo::restarts`]).
    restarts: u64,
}

/// The children of a simple_one_for_one supervisor.
struct Dynamic {
    template: ChildSpec,
    /// By start sequence number, so in start order.
    children: BTreeMap<u64, DynamicChild>,
    by_pid: HashMap<Pid, u64>,
    next: u64,
}

struct DynamicChild {
    pid: Option<Pid>,
    restarting: bool,
    /// Successful restarts ([`ChildInfo::restarts`]).
    restarts: u64,
    /// Handed to the template's start function on each restart.
    args: Message,
}

impl Supervisor {
    /// A supervisor that will run `spec` once spawned (an invalid spec
    /// makes its `init` fail with the reason).
    pub fn new(spec: SupervisorSpec) -> Supervisor {
        let invalid = spec.check().err();
        let mut specs = spec.children;
        let children = if spec.strategy == Strategy::SimpleOneForOne && invalid.is_none() {
            Children::Dynamic(Dynamic {
                template: specs.remove(0),
                children: BTreeMap::new(),
                by_pid: HashMap::new(),
                next: 0,
            })
        } else {
            Children::Static(
                specs
                    .into_iter()
                    .map(|spec| Child { spec, pid: None, restarting: false, restarts: 0 })
                    .collect(),
            )
        };
        Supervisor {
            strategy: spec.strategy,
            intensity: spec.intensity,
            period: spec.period,
            name: spec.name,
            invalid,
            children,
            parent: Pid::NODE,
            restarts: VecDeque::new(),
        }
    }

    fn on_exit(&mut self, Exit { from, reason }: Exit, ctx: &mut Ctx<'_>) {
        let found = match &mut self.children {
            Children::Static(list) => list.iter_mut().find(|c| c.pid == Some(from)).map(|child| {
                child.pid = None;
                (child.spec.id.clone(), child.spec.restart, Key::Static(child.spec.id.clone()))
            }),
            Children::Dynamic(dynamic) => dynamic.by_pid.remove(&from).map(|seq| {
                if let Some(child) = dynamic.children.get_mut(&seq) {
                    child.pid = None;
                }
                (dynamic.template.id.clone(), dynamic.template.restart, Key::Dynamic(seq))
            }),
        };
        let Some((id, restart, key)) = found else {
            if from == self.parent || from == Pid::NODE {
                // Our parent is going down: stop, and `terminate` stops the
                // children first.
                ctx.stop(reason);
            } else {
                tracing::debug!(supervisor = %ctx.pid(), %from, %reason, "ignoring an exit from a process that is neither a child nor the parent");
            }
            return;
        };
        let restart = match restart {
            Restart::Permanent => true,
            Restart::Transient => !reason.is_clean(),
            Restart::Temporary => false,
        };
        if !reason.is_clean() {
            tracing::error!(supervisor = %ctx.pid(), child = %id, pid = %from, %reason, restart, "child terminated");
        } else if restart {
            tracing::info!(supervisor = %ctx.pid(), child = %id, pid = %from, %reason, "permanent child exited; restarting");
        }
        if restart {
            self.restart(key, ctx);
            return;
        }
        match (&mut self.children, key) {
            (Children::Static(list), Key::Static(id)) => {
                list.retain(|c| c.spec.id != id || c.spec.restart != Restart::Temporary)
            }
            (Children::Dynamic(dynamic), Key::Dynamic(seq)) => {
                dynamic.children.remove(&seq);
            }
            _ => {}
        }
    }

    /// Counts a restart against the intensity; false if it exceeds it.
    fn add_restart(&mut self) -> bool {
        let now = Instant::now();
        self.restarts.push_back(now);
        while self.restarts.front().is_some_and(|&t| now.duration_since(t) > self.period) {
            self.restarts.pop_front();
        }
        self.restarts.len() <= self.intensity as usize
    }

    fn restart(&mut self, key: Key, ctx: &mut Ctx<'_>) {
        if !self.add_restart() {
            tracing::error!(
                supervisor = %ctx.pid(),
                intensity = self.intensity,
                period = ?self.period,
                "reached maximum restart intensity; stopping all children and shutting down"
            );
            ctx.stop(ExitReason::Shutdown);
            return;
        }
        let failed = match (&mut self.children, key) {
            (Children::Static(list), Key::Static(id)) => restart_static(list, self.strategy, &id, ctx),
            (Children::Dynamic(dynamic), Key::Dynamic(seq)) => {
                let Some(child) = dynamic.children.get_mut(&seq) else { return };
                match start_process(ctx, &dynamic.template, &child.args) {
                    Ok(pid) => {
                        child.pid = Some(pid);
                        child.restarting = false;
                        child.restarts += 1;
                        dynamic.by_pid.insert(pid, seq);
                        None
                    }
                    Err(reason) => {
                        child.restarting = true;
                        Some((dynamic.template.id.clone(), reason, Key::Dynamic(seq)))
                    }
                }
            }
            _ => None,
        };
        if let Some((id, reason, key)) = failed {
            tracing::error!(supervisor = %ctx.pid(), child = %id, %reason, "restarting child failed; trying again");
            let _ = ctx.send(ctx.pid(), TryAgain(key));
        }
    }

    fn try_again(&mut self, key: Key, ctx: &mut Ctx<'_>) {
        let waiting = match (&self.children, &key) {
            (Children::Static(list), Key::Static(id)) => {
                list.iter().any(|c| c.spec.id == *id && c.restarting)
            }
            (Children::Dynamic(dynamic), Key::Dynamic(seq)) => {
                dynamic.children.get(seq).is_some_and(|c| c.restarting)
            }
            _ => false,
        };
        // Otherwise the child was terminated or deleted meanwhile.
        if waiting {
            self.restart(key, ctx);
        }
    }

    /// Stops every child, last started first.
    fn terminate_children(&mut self, ctx: &Ctx<'_>) {
        match &mut self.children {
            Children::Static(list) => {
                for child in list.iter_mut().rev() {
                    child.restarting = false;
                    if let Some(pid) = child.pid.take() {
                        shutdown(ctx, &[pid], child.spec.shutdown);
                    }
                }
            }
            Children::Dynamic(dynamic) => {
                let pids: Vec<Pid> = dynamic.children.values().rev().filter_map(|c| c.pid).collect();
                dynamic.children.clear();
                dynamic.by_pid.clear();
                shutdown(ctx, &pids, dynamic.template.shutdown);
            }
        }
    }

    fn which_children(&self) -> Vec<ChildInfo> {
        match &self.children {
            Children::Static(list) => list
                .iter()
                .map(|c| ChildInfo {
                    id: c.spec.id.clone(),
                    pid: c.pid,
                    child_type: c.spec.child_type,
                    restarting: c.restarting,
                    restarts: c.restarts,
                })
                .collect(),
            Children::Dynamic(dynamic) => dynamic
                .children
                .values()
                .map(|c| ChildInfo {
                    id: dynamic.template.id.clone(),
                    pid: c.pid,
                    child_type: dynamic.template.child_type,
                    restarting: c.restarting,
                    restarts: c.restarts,
                })
                .collect(),
        }
    }

    fn count_children(&self) -> ChildCounts {
        let mut counts = ChildCounts::default();
        for child in self.which_children() {
            counts.specs += 1;
            counts.active += usize::from(child.pid.is_some());
            match child.child_type {
                ChildType::Worker => counts.workers += 1,
                ChildType::Supervisor => counts.supervisors += 1,
            }
        }
        counts
    }

    fn start_child(&mut self, spec: ChildSpec, ctx: &Ctx<'_>) -> Result<Pid, SupervisorError> {
        let Children::Static(list) = &mut self.children else {
            return Err(SupervisorError::SimpleOneForOne(
                "start_child with a child spec; use start_dynamic_child",
            ));
        };
        if let Some(child) = list.iter().find(|c| c.spec.id == spec.id) {
            return Err(match child.pid {
                Some(pid) => SupervisorError::AlreadyStarted { id: spec.id, pid },
                None => SupervisorError::AlreadyPresent(spec.id),
            });
        }
        let pid = start_process(ctx, &spec, &Message::new(()))
            .map_err(|reason| SupervisorError::StartFailed { id: spec.id.clone(), reason })?;
        list.push(Child { spec, pid: Some(pid), restarting: false, restarts: 0 });
        Ok(pid)
    }

    fn start_dynamic_child(&mut self, args: Message, ctx: &Ctx<'_>) -> Result<Pid, SupervisorError> {
        let Children::Dynamic(dynamic) = &mut self.children else {
            return Err(SupervisorError::NotSimpleOneForOne);
        };
        let pid = start_process(ctx, &dynamic.template, &args)
            .map_err(|reason| SupervisorError::StartFailed { id: dynamic.template.id.clone(), reason })?;
        let seq = dynamic.next;
        dynamic.next += 1;
        dynamic.children.insert(seq, DynamicChild { pid: Some(pid), restarting: false, restarts: 0, args });
        dynamic.by_pid.insert(pid, seq);
        Ok(pid)
    }

    fn terminate_child(&mut self, child: ChildRef, ctx: &Ctx<'_>) -> Result<(), SupervisorError> {
        match &mut self.children {
            Children::Static(list) => {
                let at = match &child {
                    ChildRef::Id(id) => list.iter().position(|c| c.spec.id == *id),
                    ChildRef::Pid(pid) => list.iter().position(|c| c.pid == Some(*pid)),
                }
                .ok_or(SupervisorError::NotFound(child))?;
                let found = &mut list[at];
                found.restarting = false;
                if let Some(pid) = found.pid.take() {
                    shutdown(ctx, &[pid], found.spec.shutdown);
                }
                if found.spec.restart == Restart::Temporary {
                    list.remove(at);
                }
            }
            Children::Dynamic(dynamic) => {
                let ChildRef::Pid(pid) = child else {
                    return Err(SupervisorError::SimpleOneForOne(
                        "terminate_child by id; pass the child's pid",
                    ));
                };
                let seq = dynamic.by_pid.remove(&pid).ok_or(SupervisorError::NotFound(child))?;
                dynamic.children.remove(&seq);
                shutdown(ctx, &[pid], dynamic.template.shutdown);
            }
        }
        Ok(())
    }

    fn child_spec(&self, id: Arc<str>) -> Result<ChildSpec, SupervisorError> {
        match &self.children {
            Children::Static(list) => list.iter().find(|c| c.spec.id == id).map(|c| c.spec.clone()),
            Children::Dynamic(dynamic) => (dynamic.template.id == id).then(|| dynamic.template.clone()),
        }
        .ok_or(SupervisorError::NotFound(ChildRef::Id(id)))
    }

    fn replace_child_spec(&mut self, spec: ChildSpec) -> Result<ChildSpec, SupervisorError> {
        let slot = match &mut self.children {
            Children::Static(list) => list.iter_mut().find(|c| c.spec.id == spec.id).map(|c| &mut c.spec),
            Children::Dynamic(dynamic) => (dynamic.template.id == spec.id).then_some(&mut dynamic.template),
        };
        match slot {
            Some(slot) => Ok(std::mem::replace(slot, spec)),
            None => Err(SupervisorError::NotFound(ChildRef::Id(spec.id))),
        }
    }

    fn change_flags(&mut self, flags: Flags) -> Result<Flags, SupervisorError> {
        let previous = Flags { strategy: self.strategy, intensity: self.intensity, period: self.period };
        let simple = |s: Strategy| s == Strategy::SimpleOneForOne;
        if simple(previous.strategy) != simple(flags.strategy) {
            return Err(SupervisorError::StrategyChange { from: previous.strategy, to: flags.strategy });
        }
        self.strategy = flags.strategy;
        self.intensity = flags.intensity;
        self.period = flags.period;
        Ok(previous)
    }

    /// Answers a call made with MessagePack (a module's, or a node's
    /// `call_json`); see "Calls from modules" in the module doc.
    fn module_call(&mut self, request: &[u8], ctx: &Ctx<'_>) -> ModuleReply {
        const ANSWERS: &str =
            "a supervisor answers {\"start_child\": ARGS}, {\"terminate_child\": PID} and \"which_children\"";
        let request = crate::module::payload_to_json(&Payload(request.to_vec()))
            .map_err(|e| format!("supervisor {}: the request is not MessagePack: {e}", ctx.pid()))?;
        let encode = |value: serde_json::Value| crate::module::json_to_payload(&value);
        let (op, arg) = match &request {
            serde_json::Value::String(op) => (op.as_str(), &serde_json::Value::Null),
            serde_json::Value::Object(map) if map.len() == 1 => {
                let (op, arg) = map.iter().next().expect("one entry");
                (op.as_str(), arg)
            }
            _ => return Err(format!("{ANSWERS}; got {request}")),
        };
        match op {
            "start_child" => {
                let args = encode(arg.clone())?;
                let pid = self.start_dynamic_child(Message::new(args), ctx).map_err(|e| match e {
                    SupervisorError::NotSimpleOneForOne => format!(
                        "supervisor {} is not simple_one_for_one: only those start children from arguments",
                        ctx.pid()
                    ),
                    other => other.to_string(),
                })?;
                encode(serde_json::json!({ "pid": pid.as_u64() }))
            }
            "terminate_child" => {
                let pid = arg.as_u64().and_then(Pid::from_u64).ok_or_else(|| {
                    format!("terminate_child takes the child's pid (a 64-bit number), got {arg}")
                })?;
                self.terminate_child(ChildRef::Pid(pid), ctx).map_err(|e| e.to_string())?;
                encode(serde_json::Value::Null)
            }
            "which_children" => {
                let children: Vec<serde_json::Value> = self
                    .which_children()
                    .into_iter()
                    .map(|c| {
                        serde_json::json!({
                            "id": &*c.id,
                            "pid": c.pid.map(Pid::as_u64),
                            "supervisor": c.child_type == ChildType::Supervisor,
                            "restarting": c.restarting,
                            "restarts": c.restarts,
                        })
                    })
                    .collect();
                encode(serde_json::Value::Array(children))
            }
            _ => Err(format!("{ANSWERS}; got {request}")),
        }
    }

    /// The stopped child `id`, for restart_child and delete_child.
    fn stopped_child(
        &mut self,
        id: Arc<str>,
        what: &'static str,
    ) -> Result<(&mut Vec<Child>, usize), SupervisorError> {
        let Children::Static(list) = &mut self.children else {
            return Err(SupervisorError::SimpleOneForOne(what));
        };
        let at = list
            .iter()
            .position(|c| c.spec.id == id)
            .ok_or(SupervisorError::NotFound(ChildRef::Id(id.clone())))?;
        if list[at].pid.is_some() {
            return Err(SupervisorError::Running(id));
        }
        if list[at].restarting {
            return Err(SupervisorError::Restarting(id));
        }
        Ok((list, at))
    }
}

/// Restarts the static child `id` and, per `strategy`, its siblings.
/// Returns the child whose start failed, if one did.
fn restart_static(
    list: &mut Vec<Child>,
    strategy: Strategy,
    id: &Arc<str>,
    ctx: &Ctx<'_>,
) -> Option<(Arc<str>, ExitReason, Key)> {
    let origin = list.iter().position(|c| c.spec.id == *id)?;
    let (first, mut end) = match strategy {
        Strategy::OneForAll => (0, list.len()),
        Strategy::RestForOne => (origin, list.len()),
        Strategy::OneForOne | Strategy::SimpleOneForOne => (origin, origin + 1),
    };
    if end - first > 1 {
        for child in list[first..end].iter_mut().rev() {
            child.restarting = false;
            if let Some(pid) = child.pid.take() {
                shutdown(ctx, &[pid], child.spec.shutdown);
            }
        }
        // Temporary children go down with the group but are not restarted.
        let kept: Vec<Child> =
            list.drain(first..end).filter(|c| c.spec.restart != Restart::Temporary).collect();
        end = first + kept.len();
        list.splice(first..first, kept);
    }
    let no_args = Message::new(());
    for child in &mut list[first..end] {
        match start_process(ctx, &child.spec, &no_args) {
            Ok(pid) => {
                child.pid = Some(pid);
                child.restarting = false;
                child.restarts += 1;
            }
            Err(reason) => {
                // The children after it stay stopped; the retry restarts the
                // group from this child again.
                child.restarting = true;
                return Some((child.spec.id.clone(), reason, Key::Static(child.spec.id.clone())));
            }
        }
    }
    None
}

/// Starts one child, linked to the supervisor, and waits for its `init`.
fn start_process(ctx: &Ctx<'_>, spec: &ChildSpec, args: &Message) -> Result<Pid, ExitReason> {
    let actor = catch_unwind(AssertUnwindSafe(|| (spec.start)(args)))
        .map_err(|panic| ExitReason::Panic(panic_message(panic.as_ref()).into()))?;
    match ctx.spawn_link_sync(actor, spec.start_timeout) {
        Ok(pid) => match &spec.name {
            None => Ok(pid),
            Some(name) => match ctx.node().register(name, pid) {
                Ok(()) => Ok(pid),
                Err(error) => {
                    // As OTP's already_started: the new process must not
                    // run unnamed; its Exit matches no child.
                    ctx.exit(pid, ExitReason::Kill);
                    Err(ExitReason::error(format!("registering the child as {name:?}: {error}")))
                }
            },
        },
        Err(SpawnError::InitFailed(_, reason)) => Err(reason),
        Err(SpawnError::Timeout(pid, timeout)) => {
            // It is linked to us and still in init: make sure it is gone (its
            // Exit then matches no child and is ignored).
            ctx.exit(pid, ExitReason::Kill);
            Err(ExitReason::error(format!("init did not finish within {timeout:?}; the process was killed")))
        }
        Err(other) => Err(ExitReason::error(other.to_string())),
    }
}

/// Stops children that share one shutdown policy: signals all, then waits
/// for each (see the module doc).
fn shutdown(ctx: &Ctx<'_>, pids: &[Pid], policy: Shutdown) {
    let survivors = match policy {
        Shutdown::BrutalKill => pids.to_vec(),
        Shutdown::Timeout(grace) => signal_and_wait(ctx, pids, ExitReason::Shutdown, grace),
        Shutdown::Infinity => signal_and_wait(ctx, pids, ExitReason::Shutdown, Duration::MAX),
    };
    if survivors.is_empty() {
        return;
    }
    if let Shutdown::Timeout(grace) = policy {
        tracing::warn!(supervisor = %ctx.pid(), children = ?survivors, ?grace, "children did not stop on shutdown in time; killing them");
    }
    for pid in signal_and_wait(ctx, &survivors, ExitReason::Kill, KILL_WAIT) {
        tracing::error!(supervisor = %ctx.pid(), %pid, "child still alive after kill (a handler is blocked); going on without it");
    }
}

/// Sends `reason` to each of `pids` and waits at most `within` (all
/// together) for them to exit; the ones still alive.
fn signal_and_wait(ctx: &Ctx<'_>, pids: &[Pid], reason: ExitReason, within: Duration) -> Vec<Pid> {
    for &pid in pids {
        ctx.exit(pid, reason.clone());
    }
    let deadline = Instant::now().checked_add(within);
    pids.iter()
        .copied()
        .filter(|&pid| {
            let left = deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(Instant::now()));
            ctx.wait_exit(pid, left).is_none()
        })
        .collect()
}

impl Actor for Supervisor {
    fn init(&mut self, ctx: &mut Ctx<'_>) -> Result<(), ExitReason> {
        if let Some(invalid) = &self.invalid {
            return Err(ExitReason::error(format!("invalid supervisor spec: {invalid}")));
        }
        ctx.trap_exit(true);
        self.parent = ctx.parent().unwrap_or(Pid::NODE);
        if let Some(name) = &self.name {
            ctx.register(name).map_err(|err| ExitReason::error(err.to_string()))?;
        }
        let Children::Static(list) = &mut self.children else { return Ok(()) };
        let no_args = Message::new(());
        let failed = list.iter_mut().find_map(|child| match start_process(ctx, &child.spec, &no_args) {
            Ok(pid) => {
                child.pid = Some(pid);
                None
            }
            Err(reason) => Some((child.spec.id.clone(), reason)),
        });
        let Some((id, reason)) = failed else { return Ok(()) };
        tracing::error!(supervisor = %ctx.pid(), child = %id, %reason, "child failed to start; stopping the others");
        self.terminate_children(ctx);
        Err(ExitReason::error(format!("child {id:?} failed to start: {reason}")))
    }

    fn handle(&mut self, message: Message, ctx: &mut Ctx<'_>) {
        let message = match message.downcast::<Exit>() {
            Ok(exit) => return self.on_exit(exit, ctx),
            Err(message) => message,
        };
        match message.downcast::<TryAgain>() {
            Ok(TryAgain(key)) => self.try_again(key, ctx),
            Err(_) => tracing::debug!(supervisor = %ctx.pid(), "supervisor ignores an unexpected message"),
        }
    }

    fn handle_call(&mut self, request: Message, reply: ReplyTo, ctx: &mut Ctx<'_>) {
        let request = match request.downcast::<Request>() {
            Ok(request) => request,
            Err(other) => {
                let bytes = match other.downcast::<Payload>() {
                    Ok(payload) => Ok(payload.0),
                    Err(other) => other
                        .downcast::<serde_json::Value>()
                        .map(|json| crate::module::json_to_payload(&json).map(|p| p.0).unwrap_or_default()),
                };
                // Anything else is refused (the caller gets `NoReply`).
                if let Ok(bytes) = bytes {
                    reply.reply_with::<ModuleReply>(self.module_call(&bytes, ctx));
                }
                return;
            }
        };
        match request {
            Request::WhichChildren => reply.reply_with(self.which_children()),
            Request::CountChildren => reply.reply_with(self.count_children()),
            Request::StartChild(spec) => reply.reply_with(self.start_child(spec, ctx)),
            Request::StartDynamicChild(args) => reply.reply_with(self.start_dynamic_child(args, ctx)),
            Request::TerminateChild(child) => reply.reply_with(self.terminate_child(child, ctx)),
            Request::RestartChild(id) => {
                let result = self.stopped_child(id, "restart_child").and_then(|(list, at)| {
                    let child = &mut list[at];
                    let pid = start_process(ctx, &child.spec, &Message::new(())).map_err(|reason| {
                        SupervisorError::StartFailed { id: child.spec.id.clone(), reason }
                    })?;
                    child.pid = Some(pid);
                    Ok(pid)
                });
                reply.reply_with(result)
            }
            Request::DeleteChild(id) => {
                let result = self.stopped_child(id, "delete_child").map(|(list, at)| {
                    list.remove(at);
                });
                reply.reply_with(result)
            }
            Request::ChildSpec(id) => reply.reply_with(self.child_spec(id)),
            Request::ReplaceChildSpec(spec) => reply.reply_with(self.replace_child_spec(spec)),
            Request::Flags => reply.reply_with(Flags {
                strategy: self.strategy,
                intensity: self.intensity,
                period: self.period,
            }),
            Request::ChangeFlags(flags) => reply.reply_with(self.change_flags(flags)),
        }
    }

    fn terminate(&mut self, _reason: &ExitReason, ctx: &mut Ctx<'_>) {
        self.terminate_children(ctx);
    }
}
