//! `release.toml`: what a release is made of and how it boots.
//!
//! This module owns the manifest's data types ([`Manifest`], [`Release`],
//! [`Module`], [`Process`], [`Supervisor`], [`Child`], [`Restart`],
//! [`Shutdown`], [`Strategy`]), parsing it from TOML with errors that a
//! person can act on, writing it back ([`Manifest::to_toml_string`]), and
//! the supervision tree it describes ([`Manifest::tree`]).
//!
//! ```toml
//! [release]
//! name = "chat"
//! version = "1.1.0"                 # semver
//! upgrade_from = ">=1.0.0, <1.1.0"  # semver requirement; absent = restart only
//!
//! [release.supervisor]              # optional: the top supervisor, chat_sup
//! strategy = "one_for_one"          # one_for_one | one_for_all | rest_for_one
//!                                   # | simple_one_for_one (default one_for_one)
//! intensity = 5                     # most restarts … (default 5)
//! period_ms = 10000                 # … within this window (default 10000)
//!
//! [config]                          # optional: the application's configuration,
//! motd = "welcome"                  # any TOML table, read by its processes
//!
//! [[module]]
//! name = "chat_room"                # the module name the library exports
//! crate = "chat_room"               # the module crate, relative to release.toml
//! # in an archive's copy: sha256 = "<hex>", file = "lib/chat_room.so"
//! [[module]]
//! name = "chat_lobby"
//! crate = "chat_lobby"
//!
//! [[supervisor]]                    # a supervisor under the top one (or under
//! name = "rooms"                    # `parent`), registered under its name
//! strategy = "simple_one_for_one"   # as above; intensity, period_ms too
//! # parent = "other_sup"            # optional: another [[supervisor]]
//! # restart = "permanent"           # as for a process (default permanent)
//! # shutdown = "infinity"           # default for supervisors
//!
//! [[process]]
//! name = "room"                     # the template of rooms' children
//! module = "chat_room"
//! supervisor = "rooms"              # optional: its supervisor (default the top one)
//! args = { history = 50 }           # the init argument, any TOML value
//!
//! [[process]]
//! name = "lobby"
//! module = "chat_lobby"
//! restart = "permanent"             # permanent | transient | temporary
//! shutdown = 2000                   # milliseconds | "brutal_kill" (default 5000)
//! args = { rooms = "rooms" }
//! [[process]]
//! name = "shard"
//! module = "chat_room"
//! instances = 4                     # optional, 1..=100000: 4 children, shard-0 … shard-3,
//!                                   # each with this module, restart and args
//! [[instruction]]                   # optional, opaque here; needs a string "op"
//! op = "update"
//! ```
//!
//! # The supervision tree
//!
//! The release boots one top supervisor, `<release>_sup`
//! ([`Manifest::supervisor_name`]), with the flags of `[release.supervisor]`.
//! Each `[[process]]` and `[[supervisor]]` is a child of the supervisor it
//! names (`supervisor` for a process, `parent` for a supervisor; absent,
//! or the top supervisor's name: the top one). **A supervisor's children
//! start in the order their tables appear in the file**, whatever their
//! kind, and stop in reverse. A manifest without `[[supervisor]]` is the
//! flat list it always was: every process under the top supervisor, in
//! file order, one_for_one with at most 5 restarts in 10 s.
//!
//! A `simple_one_for_one` supervisor starts with no child: its one child
//! table is the *template* of the children a process starts at run time
//! (a module calls the supervisor by name with `{"start_child": ARGS}`; see
//! relive-runtime's supervisor). A template is not a child the release
//! runs, so [`Manifest::children`] leaves it out.
//!
//! `shutdown` is how long a child gets to stop after `shutdown` before it
//! is killed: milliseconds, `"brutal_kill"` (killed at once), or, for a
//! supervisor only, `"infinity"` (it stops its own children first).
//!
//! # Invariants
//!
//! Invariants of every [`Manifest`] this module hands out (whether parsed or
//! checked with [`Manifest::validate`]):
//! - the release, every module, process and supervisor has a non-empty
//!   name made only of `[A-Za-z0-9_-]` (names become file names:
//!   `lib/<module>.so`, `releases/<name>/<version>/`,
//!   `<name>-<version>.tar.gz`);
//! - module names are unique, the names of the children the processes
//!   stand for are unique (see [`Manifest::children`]: a process with
//!   `instances = N` stands for `{name}-0` … `{name}-{N-1}`), and every
//!   process names a declared module;
//! - supervisor names are unique and differ from every process's child
//!   name and from the top supervisor's (all are registered names); every
//!   `supervisor` and `parent` names a declared supervisor or the top one;
//!   no supervisor is its own ancestor;
//! - a simple_one_for_one supervisor (the top one included) has exactly
//!   one child, a `[[process]]` without `instances`;
//! - `period_ms` is at least 1; `shutdown` is `"brutal_kill"`, a number of
//!   milliseconds, or `"infinity"` for a supervisor;
//! - `[config]`, when present, is a table;
//! - `instances`, when present, is in `1..=`[`MAX_INSTANCES`];
//! - a module's `sha256`, when present, is 64 hex digits;
//! - every instruction is a table with a string field `op`;
//! - no unknown field anywhere (a misspelt key is an error, not ignored).
//!
//! Every [`ManifestError`] names the file, the line (when the problem has a
//! place in the text), the field as a path such as `module[1].name`, what is
//! wrong and what to do about it.
//!
//! A process with `instances` stays one [`Process`] (one table in an
//! archive's copy, however many children it stands for); whatever makes
//! the release's processes real (the node's boot, the planner's view, a
//! listing) goes through [`Manifest::tree`] or [`Manifest::children`],
//! which expand it.
//!
//! A process's `args` and the `[config]` table are kept as
//! [`serde_json::Value`]s; an absent `args` or `[config]` is `null` and is
//! left out again when the manifest is written (TOML has no null).
//! Instructions are kept as opaque JSON values: the planner, in
//! relive-upgrader, interprets them.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// A parsed and checked `release.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The `[release]` table.
    pub release: Release,
    /// The `[config]` table, as a JSON object; `null` when absent.
    pub config: serde_json::Value,
    /// The `[[module]]` tables, in file order.
    pub modules: Vec<Module>,
    /// The `[[supervisor]]` tables, in file order.
    pub supervisors: Vec<Supervisor>,
    /// The `[[process]]` tables, in file order.
    pub processes: Vec<Process>,
    /// The `[[instruction]]` tables, opaque here; each is a JSON object with
    /// a string field `op`.
    pub instructions: Vec<serde_json::Value>,
}

/// The `[release]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Release {
    /// The release's name: `[A-Za-z0-9_-]+`.
    pub name: String,
    /// Its semver version.
    pub version: Version,
    /// Which running versions may be upgraded live to this one; `None`: only
    /// a restart reaches this release.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade_from: Option<VersionReq>,
    /// The top supervisor's flags (`[release.supervisor]`).
    #[serde(skip_serializing_if = "Flags::is_default")]
    pub supervisor: Flags,
}

/// A `[[module]]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Module {
    /// The module name its library exports: `[A-Za-z0-9_-]+`.
    pub name: String,
    /// The module crate's directory, relative to `release.toml` (TOML key
    /// `crate`).
    #[serde(rename = "crate")]
    pub krate: PathBuf,
    /// The library's sha256 (64 hex digits); set in an archive's copy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The library's path inside an archive (`lib/<name>.so`); set in an
    /// archive's copy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// The largest `instances` a `[[process]]` may have.
pub const MAX_INSTANCES: u32 = 100_000;

/// How long a process gets to stop unless its table says otherwise (OTP's
/// 5000 ms).
pub const DEFAULT_SHUTDOWN_MS: u64 = 5000;

/// A `[[process]]` table: one child of the release's supervision tree, or
/// with `instances` the template of several (see [`Process::names`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Process {
    /// The process's name: `[A-Za-z0-9_-]+`; with `instances`, the prefix
    /// of its children's names.
    pub name: String,
    /// The module it runs: one of the release's modules.
    pub module: String,
    /// When its supervisor restarts it.
    pub restart: Restart,
    /// How its supervisor stops it; default [`DEFAULT_SHUTDOWN_MS`].
    #[serde(skip_serializing_if = "Shutdown::is_process_default")]
    pub shutdown: Shutdown,
    /// The supervisor it runs under: a `[[supervisor]]`'s name; `None`: the
    /// top one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supervisor: Option<String>,
    /// How many children it stands for (`1..=`[`MAX_INSTANCES`]), named
    /// `{name}-{i}`; `None`: one child named `name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
    /// Its init argument; `null` when the manifest has no `args`.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub args: serde_json::Value,
}

/// A `[[supervisor]]` table: a supervisor inside the release's tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Supervisor {
    /// Its name, registered on the node: `[A-Za-z0-9_-]+`.
    pub name: String,
    /// The supervisor it runs under: another `[[supervisor]]`'s name;
    /// `None`: the top one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Its strategy, intensity and period.
    #[serde(flatten)]
    pub flags: Flags,
    /// When its parent restarts it.
    pub restart: Restart,
    /// How its parent stops it; default [`Shutdown::Infinity`].
    #[serde(skip_serializing_if = "Shutdown::is_supervisor_default")]
    pub shutdown: Shutdown,
    /// How many `[[process]]` tables come before it in the file: the start
    /// order of a supervisor's children is their file order, and the
    /// manifest is written back in it.
    #[serde(skip)]
    after_processes: usize,
}

impl Supervisor {
    /// A supervisor with the default flags, restart and shutdown, placed
    /// after every `[[process]]` of the manifest it is pushed to (its
    /// children's start order among its siblings is then last).
    pub fn new(name: impl Into<String>, parent: Option<String>, flags: Flags) -> Supervisor {
        Supervisor {
            name: name.into(),
            parent,
            flags,
            restart: Restart::Permanent,
            shutdown: Shutdown::Infinity,
            after_processes: usize::MAX,
        }
    }
}

/// What a supervisor does when its children exit (OTP's sup_flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Flags {
    /// Which children are restarted with the one that exited.
    pub strategy: Strategy,
    /// Most restarts within `period_ms`; one more and the supervisor gives
    /// up (its children stop and it exits, for its parent to handle).
    pub intensity: u32,
    /// The window of `intensity`, in milliseconds (at least 1).
    pub period_ms: u64,
}

impl Default for Flags {
    /// one_for_one, at most 5 restarts in 10 s (what every release had
    /// before supervisors could be declared).
    fn default() -> Flags {
        Flags { strategy: Strategy::OneForOne, intensity: 5, period_ms: 10_000 }
    }
}

impl Flags {
    fn is_default(&self) -> bool {
        *self == Flags::default()
    }
}

/// A supervisor's restart strategy, as in OTP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Only the child that exited is restarted.
    #[default]
    OneForOne,
    /// All children are stopped and started again.
    OneForAll,
    /// The child that exited and those started after it are restarted.
    RestForOne,
    /// One template; the children are started at run time by a process.
    SimpleOneForOne,
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::OneForOne => "one_for_one",
            Strategy::OneForAll => "one_for_all",
            Strategy::RestForOne => "rest_for_one",
            Strategy::SimpleOneForOne => "simple_one_for_one",
        })
    }
}

/// How a supervisor stops a child: TOML `"brutal_kill"`, a number of
/// milliseconds, or `"infinity"` (supervisors only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shutdown {
    /// Killed at once.
    BrutalKill,
    /// Asked to stop, killed if still alive after this many milliseconds.
    Millis(u64),
    /// Asked to stop and waited for (a supervisor stops its children first).
    Infinity,
}

impl Shutdown {
    fn is_process_default(&self) -> bool {
        *self == Shutdown::Millis(DEFAULT_SHUTDOWN_MS)
    }

    fn is_supervisor_default(&self) -> bool {
        *self == Shutdown::Infinity
    }
}

impl Serialize for Shutdown {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Shutdown::BrutalKill => s.serialize_str("brutal_kill"),
            Shutdown::Infinity => s.serialize_str("infinity"),
            Shutdown::Millis(ms) => s.serialize_u64(*ms),
        }
    }
}

impl fmt::Display for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shutdown::BrutalKill => f.write_str("brutal_kill"),
            Shutdown::Infinity => f.write_str("infinity"),
            Shutdown::Millis(ms) => write!(f, "{ms} ms"),
        }
    }
}

/// When a supervisor restarts a child, as in OTP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Restart {
    /// Always restarted.
    #[default]
    Permanent,
    /// Restarted only after an abnormal exit.
    Transient,
    /// Never restarted.
    Temporary,
}

impl Process {
    /// How many children it stands for: `instances`, else 1.
    pub fn count(&self) -> usize {
        self.instances.map_or(1, |n| n as usize)
    }

    /// The names of the children it stands for, in start order: `name`, or
    /// with `instances = N` `{name}-0` … `{name}-{N-1}`.
    pub fn names(&self) -> impl ExactSizeIterator<Item = String> + '_ {
        let indexed = self.instances.is_some();
        (0..self.count()).map(move |i| if indexed { format!("{}-{i}", self.name) } else { self.name.clone() })
    }
}

/// One child a release runs: a `[[process]]`, or one of the instances it
/// stands for; see [`Manifest::children`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Child<'a> {
    /// Its name (its id under its supervisor, and its registered name).
    pub name: String,
    /// The `[[process]]` it comes from (module, restart, shutdown, args).
    pub process: &'a Process,
}

/// A supervisor of the release's tree with its children, in start order;
/// see [`Manifest::tree`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeSupervisor<'a> {
    /// Its registered name (for the top one, `<release>_sup`).
    pub name: String,
    /// Its `[[supervisor]]` table; `None` for the top supervisor.
    pub table: Option<&'a Supervisor>,
    /// Its strategy, intensity and period.
    pub flags: Flags,
    /// Its children, in start order. For simple_one_for_one: the one
    /// template, as a [`TreeChild::Process`] whose name is the process's.
    pub children: Vec<TreeChild<'a>>,
}

/// A child in the release's tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TreeChild<'a> {
    /// A process (one of the instances of a `[[process]]`).
    Process(Child<'a>),
    /// A supervisor with its own children.
    Supervisor(TreeSupervisor<'a>),
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

/// What is wrong with a manifest; see [`ManifestError::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The file could not be read.
    Io,
    /// Not valid TOML.
    Syntax,
    /// A required field is absent.
    MissingField,
    /// A field this manifest format does not have.
    UnknownField,
    /// A field has a value of the wrong type or an unknown variant.
    InvalidValue,
    /// `release.version` is not a semver version.
    InvalidVersion,
    /// `release.upgrade_from` is not a semver requirement.
    InvalidRequirement,
    /// A name is empty.
    EmptyName,
    /// A name has a character other than `[A-Za-z0-9_-]`.
    InvalidName,
    /// Two modules have the same name.
    DuplicateModule,
    /// Two processes have the same name, or stand for (with `instances`)
    /// a child of the same name.
    DuplicateProcess,
    /// `instances` is not in `1..=`[`MAX_INSTANCES`].
    InvalidInstances,
    /// A process names a module the release does not declare.
    UnknownModule,
    /// A module's `sha256` is not 64 hex digits.
    InvalidChecksum,
    /// An instruction is not a table with a string field `op`.
    InstructionWithoutOp,
    /// A process's `supervisor` or a supervisor's `parent` names no
    /// declared supervisor.
    UnknownSupervisor,
    /// A supervisor's name is taken: by another supervisor, by a process
    /// (names are registered on one node), or by the top supervisor.
    DuplicateSupervisor,
    /// Supervisors are each other's parents.
    SupervisorCycle,
    /// A simple_one_for_one supervisor without exactly one child that is a
    /// `[[process]]` without `instances`.
    SimpleOneForOne,
    /// `shutdown` is not `"brutal_kill"`, milliseconds, or `"infinity"`
    /// (supervisors only).
    InvalidShutdown,
    /// `period_ms` is 0.
    InvalidPeriod,
    /// `[config]` is not a table.
    InvalidConfig,
    /// The manifest could not be written as TOML.
    Serialize,
}

impl ErrorKind {
    /// What to do about it.
    pub fn hint(self) -> &'static str {
        match self {
            ErrorKind::Io => "check that the file exists and is readable",
            ErrorKind::Syntax => "fix the TOML syntax there",
            ErrorKind::MissingField => "add the field",
            ErrorKind::UnknownField => "remove the field or correct its spelling",
            ErrorKind::InvalidValue => "give the field a value of the expected type",
            ErrorKind::InvalidVersion => "write a semver version such as \"1.2.3\"",
            ErrorKind::InvalidRequirement => {
                "write a semver requirement such as \">=1.0.0, <1.1.0\", or remove \
                 upgrade_from so that only a restart reaches this release"
            }
            ErrorKind::EmptyName => "give it a name",
            ErrorKind::InvalidName => "use only letters, digits, '_' and '-': names become file names",
            ErrorKind::DuplicateModule => "give each [[module]] its own name",
            ErrorKind::DuplicateProcess => {
                "give each [[process]] its own name (one with instances = N stands for \
                 <name>-0 … <name>-<N-1>)"
            }
            ErrorKind::InvalidInstances => {
                "write instances = N with 1 <= N <= 100000, or remove it for a single process"
            }
            ErrorKind::UnknownModule => "name a module declared in a [[module]] table, or declare it",
            ErrorKind::InvalidChecksum => {
                "remove sha256 (`relive release build` fills it in) or write the 64 hex \
                 digits of the library's sha256"
            }
            ErrorKind::InstructionWithoutOp => {
                "give every [[instruction]] a string field \"op\", such as op = \"update\""
            }
            ErrorKind::UnknownSupervisor => {
                "name a supervisor declared in a [[supervisor]] table (or declare it), or remove \
                 the field to run under the release's top supervisor"
            }
            ErrorKind::DuplicateSupervisor => {
                "give each [[supervisor]] a name no other supervisor or process has (the top \
                 supervisor is <release>_sup)"
            }
            ErrorKind::SupervisorCycle => {
                "make one supervisor of the cycle run under the top supervisor (remove its parent)"
            }
            ErrorKind::SimpleOneForOne => {
                "give a simple_one_for_one supervisor exactly one [[process]] without instances \
                 (the template of the children started at run time), or choose another strategy"
            }
            ErrorKind::InvalidShutdown => {
                "write shutdown = \"brutal_kill\", a number of milliseconds such as 5000, or (for a \
                 [[supervisor]] only) \"infinity\""
            }
            ErrorKind::InvalidPeriod => "write period_ms = N with N >= 1 (milliseconds)",
            ErrorKind::InvalidConfig => "write [config] as a table, such as [config] then key = value lines",
            ErrorKind::Serialize => "this is a bug in relive: report it",
        }
    }
}

/// A manifest that cannot be read or is not valid; its message names the
/// file, the line (if known), the field, the problem and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {}{message}; {}", file.display(), line_suffix(*line), field_prefix(field), kind.hint())]
pub struct ManifestError {
    /// The manifest file.
    pub file: PathBuf,
    /// The 1-based line of the problem, when it has a place in the text.
    pub line: Option<usize>,
    /// The field, as a path such as `release.version` or `module[1].name`;
    /// empty when the problem is not about one field.
    pub field: String,
    /// What kind of problem it is.
    pub kind: ErrorKind,
    /// What is wrong.
    pub message: String,
    /// The I/O error, for [`ErrorKind::Io`].
    #[source]
    pub source: Option<std::io::Error>,
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(":{l}")).unwrap_or_default()
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() { String::new() } else { format!("field `{field}`: ") }
}

/// The `Result` of this module.
pub type Result<T, E = ManifestError> = std::result::Result<T, E>;

// What the TOML is deserialized into: the same shape, with spans where a
// later check needs a line.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    release: RawRelease,
    config: Option<Spanned<serde_json::Value>>,
    #[serde(default)]
    module: Vec<RawModule>,
    #[serde(default)]
    supervisor: Vec<Spanned<RawSupervisor>>,
    #[serde(default)]
    process: Vec<Spanned<RawProcess>>,
    #[serde(default)]
    instruction: Vec<Spanned<serde_json::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelease {
    name: Spanned<String>,
    version: Spanned<String>,
    upgrade_from: Option<Spanned<String>>,
    supervisor: Option<Spanned<RawFlags>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlags {
    #[serde(default)]
    strategy: Option<Spanned<Strategy>>,
    intensity: Option<u32>,
    period_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSupervisor {
    name: Spanned<String>,
    parent: Option<Spanned<String>>,
    strategy: Option<Spanned<Strategy>>,
    intensity: Option<u32>,
    period_ms: Option<Spanned<u64>>,
    #[serde(default)]
    restart: Restart,
    shutdown: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModule {
    name: Spanned<String>,
    #[serde(rename = "crate")]
    krate: PathBuf,
    sha256: Option<Spanned<String>>,
    file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    name: Spanned<String>,
    module: Spanned<String>,
    #[serde(default)]
    restart: Restart,
    shutdown: Option<Spanned<toml::Value>>,
    supervisor: Option<Spanned<String>>,
    instances: Option<Spanned<i64>>,
    #[serde(default)]
    args: serde_json::Value,
}

/// Where a `[[process]]` or `[[supervisor]]` table's fields are, for the
/// tree checks' errors.
struct TreeSpans {
    /// Its `name`.
    name: Range<usize>,
    /// Its `supervisor` (a process) or `parent` (a supervisor).
    under: Option<Range<usize>>,
    /// Its `instances` (a process) or `strategy` (a supervisor).
    other: Option<Range<usize>>,
}

/// A `[[supervisor]]` or `[[process]]` table, in file order.
enum Table<'a> {
    Supervisor(&'a Supervisor),
    Process(&'a Process),
}

/// Builds errors for one file's text.
struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        self.text.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() + 1
    }

    fn err(
        &self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> ManifestError {
        ManifestError {
            file: self.file.to_path_buf(),
            line: span.map(|s| self.line_of(s.start)),
            field: field.into(),
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Turns a toml/serde error into a [`ManifestError`]: its kind from the
    /// message, its field from the message (missing and unknown fields) or
    /// from the key on the error's line, qualified by the table the line is
    /// in.
    fn toml_error(&self, e: &toml::de::Error) -> ManifestError {
        let message = e.message().trim().to_string();
        let kind = if message.starts_with("missing field") {
            ErrorKind::MissingField
        } else if message.starts_with("unknown field") {
            ErrorKind::UnknownField
        } else if message.starts_with("invalid type")
            || message.starts_with("unknown variant")
            || message.starts_with("invalid value")
            || message.starts_with("invalid length")
        {
            ErrorKind::InvalidValue
        } else {
            ErrorKind::Syntax
        };
        // A span over the whole document (a missing top-level table) has no
        // one line and no table.
        let span =
            e.span().filter(|s| !(s.start == 0 && (s.end == 0 || s.end >= self.text.trim_end().len())));
        let field = match kind {
            ErrorKind::Syntax => String::new(),
            _ => {
                let table = span.as_ref().map(|s| self.table_at(s.start)).unwrap_or_default();
                let key = match kind {
                    ErrorKind::MissingField | ErrorKind::UnknownField => {
                        first_quoted(&message).map(str::to_string)
                    }
                    _ => span.as_ref().and_then(|s| self.key_on_line(s.start)),
                };
                match (table.is_empty(), key) {
                    (_, None) => table,
                    (true, Some(k)) => k,
                    (false, Some(k)) if k == table => k,
                    (false, Some(k)) => format!("{table}.{k}"),
                }
            }
        };
        self.err(span, field, kind, message)
    }

    /// A supervisor's flags from its table's fields (defaults for the
    /// absent ones); `table` is the field path of the table.
    fn flags(
        &self,
        strategy: Option<&Spanned<Strategy>>,
        intensity: Option<u32>,
        period_ms: Option<&Spanned<u64>>,
        table: &str,
    ) -> Result<Flags> {
        let defaults = Flags::default();
        let period = match period_ms {
            None => defaults.period_ms,
            Some(period) if *period.get_ref() == 0 => {
                return Err(self.err(
                    Some(period.span()),
                    format!("{table}.period_ms"),
                    ErrorKind::InvalidPeriod,
                    "period_ms = 0 is an empty window",
                ));
            }
            Some(period) => *period.get_ref(),
        };
        Ok(Flags {
            strategy: strategy.map_or(defaults.strategy, |s| *s.get_ref()),
            intensity: intensity.unwrap_or(defaults.intensity),
            period_ms: period,
        })
    }

    /// A child's `shutdown`: `"brutal_kill"`, milliseconds, or for a
    /// supervisor `"infinity"`; absent, the default of its kind.
    fn shutdown(
        &self,
        value: Option<&Spanned<toml::Value>>,
        field: &str,
        owner: &str,
        supervisor: bool,
    ) -> Result<Shutdown> {
        let Some(value) = value else {
            return Ok(if supervisor { Shutdown::Infinity } else { Shutdown::Millis(DEFAULT_SHUTDOWN_MS) });
        };
        let what = if supervisor { "supervisor" } else { "process" };
        let bad = |message: String| self.err(Some(value.span()), field, ErrorKind::InvalidShutdown, message);
        match value.get_ref() {
            toml::Value::Integer(ms) => u64::try_from(*ms)
                .map(Shutdown::Millis)
                .map_err(|_| bad(format!("{what} {owner:?} has shutdown = {ms}, a negative time"))),
            toml::Value::String(word) if word == "brutal_kill" => Ok(Shutdown::BrutalKill),
            toml::Value::String(word) if word == "infinity" && supervisor => Ok(Shutdown::Infinity),
            toml::Value::String(word) if word == "infinity" => Err(bad(format!(
                "process {owner:?} has shutdown = \"infinity\", which only a supervisor may have \
                 (a process that does not stop would hold up its supervisor's shutdown forever)"
            ))),
            other => Err(bad(format!("{what} {owner:?} has shutdown = {other}"))),
        }
    }

    /// The table the byte `offset` is in, as `release` or `module[1]`, from
    /// the table headers before it (`[x]` or `[[x]]`, counted).
    fn table_at(&self, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let mut current = String::new();
        let mut counts: std::collections::HashMap<String, usize> = Default::default();
        let mut pos = 0;
        for line in self.text.split_inclusive('\n') {
            // A header whose line holds the offset counts too (a missing
            // field's span is often the header itself).
            if pos > offset {
                break;
            }
            pos += line.len();
            let t = line.trim();
            let t = t.split('#').next().unwrap_or("").trim();
            if let Some(inner) = t.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
                let name = inner.trim().to_string();
                if is_header_name(&name) {
                    let n = counts.entry(name.clone()).or_insert(0);
                    current = format!("{name}[{n}]");
                    *n += 1;
                }
            } else if let Some(inner) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                let name = inner.trim().to_string();
                if is_header_name(&name) {
                    current = name;
                }
            }
        }
        current
    }

    /// The key of a `key = value` line holding the byte `offset`.
    fn key_on_line(&self, offset: usize) -> Option<String> {
        let offset = offset.min(self.text.len());
        let start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line = self.text[start..].lines().next().unwrap_or("");
        let (key, _) = line.split_once('=')?;
        let key = key.trim().trim_matches('"');
        (!key.is_empty() && key.chars().all(|c| is_name_char(c) || c == '.')).then(|| key.to_string())
    }
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| is_name_char(c) || c == '.')
}

fn first_quoted(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Checks that `name` is non-empty and made of `[A-Za-z0-9_-]`; the error
/// message (without file or field) otherwise. Public so that other parts of
/// relive apply the same rule to names they turn into file names.
pub fn check_name(name: &str) -> std::result::Result<(), (ErrorKind, String)> {
    if name.is_empty() {
        return Err((ErrorKind::EmptyName, "the name is empty".into()));
    }
    if let Some(c) = name.chars().find(|&c| !is_name_char(c)) {
        return Err((ErrorKind::InvalidName, format!("the name {name:?} has the character {c:?}")));
    }
    Ok(())
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Manifest {
    /// Reads and parses the manifest at `path`.
    pub fn from_path(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
            file: path.to_path_buf(),
            line: None,
            field: String::new(),
            kind: ErrorKind::Io,
            message: format!("cannot read the manifest: {e}"),
            source: Some(e),
        })?;
        Manifest::parse(&text, path)
    }

    /// Parses and checks the manifest `text`; errors name `file`.
    pub fn parse(text: &str, file: &Path) -> Result<Manifest> {
        let cx = Ctx { file, text };
        let raw: RawManifest = toml::from_str(text).map_err(|e| cx.toml_error(&e))?;
        let mut errs_first: Option<ManifestError> = None;
        let mut fail = |e: ManifestError| {
            if errs_first.is_none() {
                errs_first = Some(e);
            }
        };

        let name_check = |name: &Spanned<String>, field: String| {
            check_name(name.get_ref()).map_err(|(kind, msg)| cx.err(Some(name.span()), field, kind, msg))
        };

        // [release]
        if let Err(e) = name_check(&raw.release.name, "release.name".into()) {
            fail(e);
        }
        let version = match Version::parse(raw.release.version.get_ref().trim()) {
            Ok(v) => Some(v),
            Err(e) => {
                fail(cx.err(
                    Some(raw.release.version.span()),
                    "release.version",
                    ErrorKind::InvalidVersion,
                    format!("{:?} is not a semver version: {e}", raw.release.version.get_ref()),
                ));
                None
            }
        };
        let upgrade_from = match &raw.release.upgrade_from {
            None => None,
            Some(req) => match VersionReq::parse(req.get_ref()) {
                Ok(r) => Some(r),
                Err(e) => {
                    fail(cx.err(
                        Some(req.span()),
                        "release.upgrade_from",
                        ErrorKind::InvalidRequirement,
                        format!("{:?} is not a semver requirement: {e}", req.get_ref()),
                    ));
                    None
                }
            },
        };

        // [release.supervisor]
        let top_name = format!("{}_sup", raw.release.name.get_ref());
        let top_flags = match &raw.release.supervisor {
            None => Flags::default(),
            Some(flags) => {
                let flags = flags.get_ref();
                match cx.flags(
                    flags.strategy.as_ref(),
                    flags.intensity,
                    flags.period_ms.as_ref(),
                    "release.supervisor",
                ) {
                    Ok(flags) => flags,
                    Err(e) => {
                        fail(e);
                        Flags::default()
                    }
                }
            }
        };

        // [config]
        let config = match raw.config {
            None => serde_json::Value::Null,
            Some(config) if config.get_ref().is_object() => config.into_inner(),
            Some(config) => {
                fail(cx.err(
                    Some(config.span()),
                    "config",
                    ErrorKind::InvalidConfig,
                    format!("config is {}, not a table", config.get_ref()),
                ));
                serde_json::Value::Null
            }
        };

        // [[module]]
        let mut module_names = HashSet::new();
        let mut modules = Vec::with_capacity(raw.module.len());
        for (i, m) in raw.module.into_iter().enumerate() {
            if let Err(e) = name_check(&m.name, format!("module[{i}].name")) {
                fail(e);
            } else if !module_names.insert(m.name.get_ref().clone()) {
                fail(cx.err(
                    Some(m.name.span()),
                    format!("module[{i}].name"),
                    ErrorKind::DuplicateModule,
                    format!("a module named {:?} is already declared", m.name.get_ref()),
                ));
            }
            if let Some(sha) = &m.sha256
                && !is_sha256_hex(sha.get_ref())
            {
                fail(cx.err(
                    Some(sha.span()),
                    format!("module[{i}].sha256"),
                    ErrorKind::InvalidChecksum,
                    format!("{:?} is not 64 hex digits", sha.get_ref()),
                ));
            }
            modules.push(Module {
                name: m.name.into_inner(),
                krate: m.krate,
                sha256: m.sha256.map(|s| s.into_inner().to_ascii_lowercase()),
                file: m.file,
            });
        }

        // [[process]]
        // The name of every child the processes stand for (expanded), and
        // the index of the process that declares it.
        let mut child_names: HashMap<String, usize> = HashMap::new();
        let mut processes: Vec<Process> = Vec::with_capacity(raw.process.len());
        // Where each [[process]] table starts, and the span of its
        // `supervisor` (or its name), for the tree checks below.
        let mut process_starts = Vec::with_capacity(raw.process.len());
        let mut process_refs: Vec<TreeSpans> = Vec::with_capacity(raw.process.len());
        for (i, p) in raw.process.into_iter().enumerate() {
            process_starts.push(p.span().start);
            let p = p.into_inner();
            let name_ok = match name_check(&p.name, format!("process[{i}].name")) {
                Ok(()) => true,
                Err(e) => {
                    fail(e);
                    false
                }
            };
            if !module_names.contains(p.module.get_ref()) {
                fail(cx.err(
                    Some(p.module.span()),
                    format!("process[{i}].module"),
                    ErrorKind::UnknownModule,
                    format!(
                        "process {:?} runs module {:?}, which the release does not declare",
                        p.name.get_ref(),
                        p.module.get_ref()
                    ),
                ));
            }
            let instances = match &p.instances {
                None => Some(None),
                Some(n) => match u32::try_from(*n.get_ref()) {
                    Ok(count) if (1..=MAX_INSTANCES).contains(&count) => Some(Some(count)),
                    _ => {
                        fail(cx.err(
                            Some(n.span()),
                            format!("process[{i}].instances"),
                            ErrorKind::InvalidInstances,
                            format!(
                                "process {:?} has instances = {}, outside 1..={MAX_INSTANCES}",
                                p.name.get_ref(),
                                n.get_ref()
                            ),
                        ));
                        None
                    }
                },
            };
            let shutdown = cx
                .shutdown(p.shutdown.as_ref(), &format!("process[{i}].shutdown"), p.name.get_ref(), false)
                .unwrap_or_else(|e| {
                    fail(e);
                    Shutdown::Millis(DEFAULT_SHUTDOWN_MS)
                });
            let name_span = p.name.span();
            process_refs.push(TreeSpans {
                name: name_span.clone(),
                under: p.supervisor.as_ref().map(Spanned::span),
                other: p.instances.as_ref().map(Spanned::span),
            });
            let process = Process {
                name: p.name.into_inner(),
                module: p.module.into_inner(),
                restart: p.restart,
                shutdown,
                // The top supervisor by name is the top supervisor.
                supervisor: p.supervisor.map(Spanned::into_inner).filter(|s| *s != top_name),
                instances: instances.flatten(),
                args: p.args,
            };
            if name_ok && process.names().any(|child| child == top_name) {
                fail(cx.err(
                    Some(name_span.clone()),
                    format!("process[{i}].name"),
                    ErrorKind::DuplicateProcess,
                    format!("{top_name:?} is the release's top supervisor's name"),
                ));
            }
            if name_ok && instances.is_some() {
                let clash = process.names().find_map(|child| match child_names.entry(child) {
                    Entry::Occupied(taken) => Some((taken.key().clone(), *taken.get())),
                    Entry::Vacant(free) => {
                        free.insert(i);
                        None
                    }
                });
                if let Some((child, first)) = clash {
                    let earlier = &processes[first];
                    let declared_by = match earlier.instances {
                        None => format!("process[{first}]"),
                        Some(n) => format!(
                            "process[{first}] ({:?} with instances = {n}: {0}-0 … {0}-{})",
                            earlier.name,
                            n - 1
                        ),
                    };
                    let message = match process.instances {
                        None => format!("a process named {child:?} is already declared by {declared_by}"),
                        Some(n) => format!(
                            "process {:?} with instances = {n} stands for a child named {child:?}, \
                             already declared by {declared_by}",
                            process.name
                        ),
                    };
                    fail(cx.err(
                        Some(name_span),
                        format!("process[{i}].name"),
                        ErrorKind::DuplicateProcess,
                        message,
                    ));
                }
            }
            processes.push(process);
        }

        // [[supervisor]]
        let mut supervisors: Vec<Supervisor> = Vec::with_capacity(raw.supervisor.len());
        let mut supervisor_index: HashMap<String, usize> = HashMap::new();
        // The span of each one's `parent` (or name) and of its `strategy`.
        let mut supervisor_refs: Vec<TreeSpans> = Vec::with_capacity(raw.supervisor.len());
        for (i, sup) in raw.supervisor.into_iter().enumerate() {
            let start = sup.span().start;
            let sup = sup.into_inner();
            let field = |key: &str| format!("supervisor[{i}].{key}");
            let name = sup.name.get_ref();
            let name_ok = match name_check(&sup.name, field("name")) {
                Ok(()) => true,
                Err(e) => {
                    fail(e);
                    false
                }
            };
            if name_ok {
                let taken = if *name == top_name {
                    Some(format!("{name:?} is the release's top supervisor's name"))
                } else if let Some(&first) = supervisor_index.get(name) {
                    Some(format!("a supervisor named {name:?} is already declared by supervisor[{first}]"))
                } else {
                    child_names
                        .get(name)
                        .map(|&p| format!("process[{p}] already stands for a process named {name:?}"))
                };
                match taken {
                    Some(message) => fail(cx.err(
                        Some(sup.name.span()),
                        field("name"),
                        ErrorKind::DuplicateSupervisor,
                        message,
                    )),
                    None => {
                        supervisor_index.insert(name.clone(), i);
                    }
                }
            }
            let flags = cx
                .flags(
                    sup.strategy.as_ref(),
                    sup.intensity,
                    sup.period_ms.as_ref(),
                    &format!("supervisor[{i}]"),
                )
                .unwrap_or_else(|e| {
                    fail(e);
                    Flags::default()
                });
            let shutdown =
                cx.shutdown(sup.shutdown.as_ref(), &field("shutdown"), name, true).unwrap_or_else(|e| {
                    fail(e);
                    Shutdown::Infinity
                });
            supervisor_refs.push(TreeSpans {
                name: sup.name.span(),
                under: sup.parent.as_ref().map(Spanned::span),
                other: sup.strategy.as_ref().map(Spanned::span),
            });
            supervisors.push(Supervisor {
                name: sup.name.into_inner(),
                parent: sup.parent.map(Spanned::into_inner).filter(|p| *p != top_name),
                flags,
                restart: sup.restart,
                shutdown,
                after_processes: process_starts.iter().filter(|&&p| p < start).count(),
            });
        }

        // The tree: every reference names a supervisor, no cycle, and each
        // simple_one_for_one supervisor has its one template.
        for (i, process) in processes.iter().enumerate() {
            if let Some(sup) = &process.supervisor
                && !supervisor_index.contains_key(sup)
            {
                fail(cx.err(
                    process_refs[i].under.clone(),
                    format!("process[{i}].supervisor"),
                    ErrorKind::UnknownSupervisor,
                    format!(
                        "process {:?} runs under supervisor {sup:?}, which the release does not declare",
                        process.name
                    ),
                ));
            }
        }
        for (i, sup) in supervisors.iter().enumerate() {
            let Some(parent) = &sup.parent else { continue };
            if !supervisor_index.contains_key(parent) {
                fail(cx.err(
                    supervisor_refs[i].under.clone(),
                    format!("supervisor[{i}].parent"),
                    ErrorKind::UnknownSupervisor,
                    format!(
                        "supervisor {:?} runs under {parent:?}, which the release does not declare",
                        sup.name
                    ),
                ));
                continue;
            }
            // Up the parents: reaching the top ends the walk, reaching this
            // one again is a cycle (at most one step per supervisor).
            let mut chain = vec![sup.name.as_str()];
            let mut at = Some(parent.as_str());
            while let Some(name) = at
                && chain.len() <= supervisors.len()
            {
                chain.push(name);
                if name == sup.name {
                    fail(cx.err(
                        supervisor_refs[i].under.clone(),
                        format!("supervisor[{i}].parent"),
                        ErrorKind::SupervisorCycle,
                        format!(
                            "the supervisors {} are each other's parents: none of them runs under the top supervisor",
                            chain.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(" → ")
                        ),
                    ));
                    break;
                }
                at = supervisor_index.get(name).and_then(|&p| supervisors[p].parent.as_deref());
            }
        }
        let simple = std::iter::once((None, top_flags.strategy))
            .chain(supervisors.iter().map(|s| (Some(s.name.as_str()), s.flags.strategy)))
            .enumerate()
            .filter(|(_, (_, strategy))| *strategy == Strategy::SimpleOneForOne);
        for (at, (name, _)) in simple {
            let shown = name.unwrap_or(&top_name);
            let template = processes.iter().position(|p| p.supervisor.as_deref() == name);
            let other_process = template.and_then(|t| {
                processes.iter().enumerate().skip(t + 1).find(|(_, p)| p.supervisor.as_deref() == name)
            });
            let child_supervisor = supervisors.iter().position(|s| s.parent.as_deref() == name);
            let (span, field, message) = if let Some(j) = child_supervisor {
                (
                    supervisor_refs[j].under.clone().or(Some(supervisor_refs[j].name.clone())),
                    format!("supervisor[{j}].parent"),
                    format!(
                        "supervisor {:?} runs under the simple_one_for_one supervisor {shown:?}, whose one child must be a [[process]]",
                        supervisors[j].name
                    ),
                )
            } else if let Some((k, second)) = other_process {
                let t = template.expect("a second child has a first");
                (
                    process_refs[k].under.clone().or(Some(process_refs[k].name.clone())),
                    if process_refs[k].under.is_some() {
                        format!("process[{k}].supervisor")
                    } else {
                        format!("process[{k}].name")
                    },
                    format!(
                        "process {:?} is a second child of the simple_one_for_one supervisor {shown:?} \
                         (process {:?} is already its template)",
                        second.name, processes[t].name
                    ),
                )
            } else if let Some(t) = template.filter(|&t| processes[t].instances.is_some()) {
                (
                    process_refs[t].other.clone(),
                    format!("process[{t}].instances"),
                    format!(
                        "process {:?} is the template of the simple_one_for_one supervisor {shown:?}: \
                         its children are started at run time, not as instances",
                        processes[t].name
                    ),
                )
            } else if template.is_none() {
                let (span, field) = match at {
                    0 => (
                        raw.release
                            .supervisor
                            .as_ref()
                            .and_then(|f| f.get_ref().strategy.as_ref().map(Spanned::span)),
                        "release.supervisor.strategy".to_string(),
                    ),
                    n => (supervisor_refs[n - 1].other.clone(), format!("supervisor[{}].strategy", n - 1)),
                };
                (
                    span,
                    field,
                    format!(
                        "the simple_one_for_one supervisor {shown:?} has no [[process]] as the template of its children"
                    ),
                )
            } else {
                continue;
            };
            fail(cx.err(span, field, ErrorKind::SimpleOneForOne, message));
        }

        // [[instruction]]
        let mut instructions = Vec::with_capacity(raw.instruction.len());
        for (i, ins) in raw.instruction.into_iter().enumerate() {
            if !ins.get_ref().get("op").is_some_and(|op| op.is_string()) {
                fail(cx.err(
                    Some(ins.span()),
                    format!("instruction[{i}].op"),
                    ErrorKind::InstructionWithoutOp,
                    "the instruction has no string field \"op\"",
                ));
            }
            instructions.push(ins.into_inner());
        }

        if let Some(e) = errs_first {
            return Err(e);
        }
        Ok(Manifest {
            release: Release {
                name: raw.release.name.into_inner(),
                version: version.expect("checked above"),
                upgrade_from,
                supervisor: top_flags,
            },
            config,
            modules,
            supervisors,
            processes,
            instructions,
        })
    }

    /// Checks the invariants of the module doc on a manifest built or
    /// changed in code, by writing it and parsing it back; errors name
    /// `file`.
    pub fn validate(&self, file: &Path) -> Result<()> {
        let text = self.to_toml_string().map_err(|mut e| {
            e.file = file.to_path_buf();
            e
        })?;
        Manifest::parse(&text, file).map(|_| ())
    }

    /// The manifest as TOML; [`Manifest::parse`] of it gives an equal
    /// manifest. The `[[supervisor]]` and `[[process]]` tables are written
    /// in their file order (the start order of a supervisor's children).
    /// Fails only if an `args`, the config or an instruction holds a JSON
    /// null (TOML has none), which a parsed manifest never does.
    pub fn to_toml_string(&self) -> Result<String> {
        #[derive(Serialize)]
        struct Head<'a> {
            release: &'a Release,
            #[serde(skip_serializing_if = "serde_json::Value::is_null")]
            config: &'a serde_json::Value,
            #[serde(skip_serializing_if = "<[Module]>::is_empty")]
            module: &'a [Module],
        }
        #[derive(Serialize)]
        struct OneSupervisor<'a> {
            supervisor: [&'a Supervisor; 1],
        }
        #[derive(Serialize)]
        struct OneProcess<'a> {
            process: [&'a Process; 1],
        }
        #[derive(Serialize)]
        struct Instructions<'a> {
            instruction: &'a [serde_json::Value],
        }
        let failed = |e: toml::ser::Error| ManifestError {
            file: PathBuf::from(format!("<{}-{}>", self.release.name, self.release.version)),
            line: None,
            field: String::new(),
            kind: ErrorKind::Serialize,
            message: format!("cannot write the manifest as TOML: {e}"),
            source: None,
        };
        let mut text =
            toml::to_string(&Head { release: &self.release, config: &self.config, module: &self.modules })
                .map_err(failed)?;
        for entry in self.file_order() {
            text.push('\n');
            text += &match entry {
                Table::Supervisor(sup) => toml::to_string(&OneSupervisor { supervisor: [sup] }),
                Table::Process(process) => toml::to_string(&OneProcess { process: [process] }),
            }
            .map_err(failed)?;
        }
        if !self.instructions.is_empty() {
            text.push('\n');
            text += &toml::to_string(&Instructions { instruction: &self.instructions }).map_err(failed)?;
        }
        Ok(text)
    }

    /// The `[[supervisor]]` and `[[process]]` tables in file order.
    fn file_order(&self) -> Vec<Table<'_>> {
        // A supervisor placed after `n` processes comes before process n;
        // one added in code (placed after all) comes last.
        let mut keyed: Vec<((usize, u8, usize), Table<'_>)> = self
            .supervisors
            .iter()
            .enumerate()
            .map(|(j, s)| ((s.after_processes.min(self.processes.len()), 0, j), Table::Supervisor(s)))
            .chain(self.processes.iter().enumerate().map(|(i, p)| ((i, 1, 0), Table::Process(p))))
            .collect();
        keyed.sort_by_key(|(key, _)| *key);
        keyed.into_iter().map(|(_, entry)| entry).collect()
    }

    /// The name of the release's top supervisor: `<release>_sup` (the same
    /// rule as relive-upgrader's `planner::supervisor_name`).
    pub fn supervisor_name(&self) -> String {
        format!("{}_sup", self.release.name)
    }

    /// The supervision tree the release boots: its top supervisor with its
    /// children in start order, processes with `instances` expanded, and
    /// each `[[supervisor]]` with its own children.
    pub fn tree(&self) -> TreeSupervisor<'_> {
        let entries = self.file_order();
        self.subtree(self.supervisor_name(), None, self.release.supervisor, &entries)
    }

    fn subtree<'a>(
        &'a self,
        name: String,
        table: Option<&'a Supervisor>,
        flags: Flags,
        entries: &[Table<'a>],
    ) -> TreeSupervisor<'a> {
        let parent = table.map(|s| s.name.as_str());
        let simple = flags.strategy == Strategy::SimpleOneForOne;
        let mut children = Vec::new();
        for entry in entries {
            match entry {
                Table::Process(process) if process.supervisor.as_deref() == parent => {
                    if simple {
                        children.push(TreeChild::Process(Child { name: process.name.clone(), process }));
                    } else {
                        children
                            .extend(process.names().map(|name| TreeChild::Process(Child { name, process })));
                    }
                }
                Table::Supervisor(sup) if sup.parent.as_deref() == parent => {
                    children.push(TreeChild::Supervisor(self.subtree(
                        sup.name.clone(),
                        Some(sup),
                        sup.flags,
                        entries,
                    )));
                }
                _ => {}
            }
        }
        TreeSupervisor { name, table, flags, children }
    }

    /// Every child the release runs at boot, in start order (depth first
    /// through the tree): each process, with one that has `instances = N`
    /// expanded to its N children ([`Process::names`]). The templates of
    /// simple_one_for_one supervisors are not children. Their names are
    /// unique (checked by [`Manifest::parse`]).
    pub fn children(&self) -> Box<dyn Iterator<Item = Child<'_>> + '_> {
        if self.is_flat() {
            return Box::new(
                self.processes
                    .iter()
                    .flat_map(|process| process.names().map(move |name| Child { name, process })),
            );
        }
        fn walk<'a>(sup: TreeSupervisor<'a>, out: &mut Vec<Child<'a>>) {
            if sup.flags.strategy == Strategy::SimpleOneForOne {
                return;
            }
            for child in sup.children {
                match child {
                    TreeChild::Process(child) => out.push(child),
                    TreeChild::Supervisor(sup) => walk(sup, out),
                }
            }
        }
        let mut out = Vec::new();
        walk(self.tree(), &mut out);
        Box::new(out.into_iter())
    }

    /// How many children [`Manifest::children`] yields.
    pub fn child_count(&self) -> usize {
        if self.is_flat() { self.processes.iter().map(Process::count).sum() } else { self.children().count() }
    }

    /// No `[[supervisor]]` and a top supervisor that starts its children:
    /// the processes are the children, in file order.
    fn is_flat(&self) -> bool {
        self.supervisors.is_empty() && self.release.supervisor.strategy != Strategy::SimpleOneForOne
    }

    /// Whether a node running version `from` of this release may be upgraded
    /// live to this one: `upgrade_from` is present and matches `from` (with
    /// semver's rules: a pre-release matches only a requirement that names
    /// the same major.minor.patch with a pre-release).
    pub fn allows_upgrade_from(&self, from: &Version) -> bool {
        self.release.upgrade_from.as_ref().is_some_and(|req| req.matches(from))
    }

    /// The module named `name`.
    pub fn module(&self, name: &str) -> Option<&Module> {
        self.modules.iter().find(|m| m.name == name)
    }
}
