//! Upgrade plans: the appup/relup of relive, an ordered list of
//! instructions the controller applies as one transaction.
//!
//! A plan is plain data (serde: JSON for scripts, TOML in a release's
//! `[[instruction]]` entries) and prints readably with `Display`.
//! [`Plan::validate`] catches what can be caught without a node: an update
//! of a module the plan never loads is fine (it may already be loaded), but
//! a module loaded twice, an update before its load, or a purge before the
//! update that still needs the old code are refused with the instruction's
//! number.
//!
//! # Supervision trees
//!
//! A release's processes run in a tree of supervisors, described by
//! [`SupervisorDef`] and [`ChildDef`] (the planner's views and the plan's
//! instructions use the same types; [`crate::tree`] turns them into the
//! runtime's specs). The instructions on a tree, each undone by a rollback:
//!
//! - `start_child`: a module process under a running supervisor (appended
//!   after its children). Undone by stopping and deleting it.
//! - `start_supervisor`: a supervisor with its whole subtree under a running
//!   supervisor; it starts its children in order, as at boot. Undone by
//!   stopping it (it stops its children, last started first) and deleting
//!   its spec.
//! - `stop_child`: a child, worker or supervisor (a supervisor stops its
//!   children first); its spec is kept until commit. Undone by starting it
//!   again (from the spec kept, even for a temporary child, whose spec its
//!   supervisor forgets).
//! - `change_child`: replaces a child's stored spec (args, restart,
//!   shutdown; for a supervisor child, its whole subtree), as OTP's
//!   supervisor `code_change`: the running child is **not** restarted, the
//!   new spec applies at its next (re)start. For a simple_one_for_one
//!   supervisor, the child is its template. Undone by putting the old spec
//!   back.
//! - `change_supervisor`: the strategy, intensity and period of a running
//!   supervisor (not to or from simple_one_for_one: that takes a stop and a
//!   start). Undone by setting the old ones again.
//!
//! `change_config` sets the application configuration and runs every
//! running module process's `config_change` (see [`Instruction::ChangeConfig`]).

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// An upgrade plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// What it does, for reports and logs ("counter 1.0.0 → 2.0.0").
    pub name: String,
    /// The instructions, applied in order.
    #[serde(rename = "instruction", alias = "instructions", default)]
    pub instructions: Vec<Instruction>,
    /// The releases it goes between, when the planner made it from two
    /// releases. The controller keeps it with its undo, so what a rollback
    /// returns to is never recorded anywhere else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub releases: Option<ReleaseStep>,
}

/// A release, by name and version (the upgrader knows nothing else of
/// releases).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseId {
    /// The application's name.
    pub name: String,
    /// Its version.
    pub version: semver::Version,
}

impl fmt::Display for ReleaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name, self.version)
    }
}

/// The release a plan starts from and the one it goes to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseStep {
    /// Where it starts: what undoing it returns to.
    pub from: ReleaseId,
    /// Where it goes.
    pub to: ReleaseId,
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Instruction {
    /// Loads a new version of a loaded module; it becomes current, the
    /// running one old. Processes stay on the old one until an `update`.
    LoadModule {
        /// The module.
        module: String,
        /// Its library.
        path: PathBuf,
    },
    /// Loads a module new in this release.
    AddModule {
        /// The module.
        module: String,
        /// Its library.
        path: PathBuf,
    },
    /// Moves processes of `module` to its current version through
    /// `code_change`, each paused only for its own migration.
    Update {
        /// The module.
        module: String,
        /// Which of its processes: all (default) or registered names.
        #[serde(default)]
        processes: Processes,
        /// Given to `code_change` (any JSON; MessagePack to the module).
        #[serde(default)]
        extra: serde_json::Value,
        /// Suspend all of them first and resume them together: for
        /// processes whose messages the new code cannot mix with the old
        /// (each is then paused for the whole group's migration).
        #[serde(default)]
        suspend_together: bool,
    },
    /// Makes a module's current version old; its processes keep running
    /// until purged.
    DeleteModule {
        /// The module.
        module: String,
    },
    /// Starts a new module process under a supervisor, registered under
    /// its `id` on every start (as a release's processes are).
    StartChild {
        /// The supervisor's registered name.
        supervisor: String,
        /// The child's id.
        id: String,
        /// The module it runs (its current version).
        module: String,
        /// Its init argument.
        #[serde(default)]
        args: serde_json::Value,
        /// When its supervisor restarts it (default permanent).
        #[serde(default)]
        restart: Restart,
        /// How its supervisor stops it (default 5000 ms).
        #[serde(default)]
        shutdown: Shutdown,
    },
    /// Starts a supervisor with its subtree under a running supervisor.
    StartSupervisor {
        /// The parent's registered name.
        supervisor: String,
        /// The new supervisor (its `id` is also its registered name) and
        /// its children.
        spec: SupervisorDef,
    },
    /// Replaces the stored spec of a running supervisor's child (by the
    /// child's id); the running child is not restarted.
    ChangeChild {
        /// The supervisor's registered name.
        supervisor: String,
        /// The child's new spec.
        child: ChildDef,
    },
    /// Sets the node's application configuration (a release's `[config]`)
    /// and runs `config_change` in every running module process, all at
    /// once, each in its own turn. One that refuses (an error or a panic)
    /// aborts the upgrade like a failed `code_change`: the old
    /// configuration is set again and the processes that took the new one
    /// are told of the old one. Processes started later in the plan read
    /// the new configuration in their `init`. Undone the same way.
    ChangeConfig {
        /// The new configuration, a JSON object (`null`: an empty one). In
        /// a release's own instructions it may be left out: the release's
        /// `[config]` is filled in.
        #[serde(default)]
        config: serde_json::Value,
    },
    /// Sets a running supervisor's strategy, intensity and period.
    ChangeSupervisor {
        /// The supervisor's registered name.
        supervisor: String,
        /// Its new flags.
        flags: Flags,
    },
    /// Stops a supervisor's child (its spec is kept until the plan is
    /// committed, so a rollback starts it again).
    StopChild {
        /// The supervisor's registered name.
        supervisor: String,
        /// The child's id.
        id: String,
    },
    /// Stops a child and starts it again on current code: for a process
    /// whose state cannot be migrated.
    Restart {
        /// The supervisor's registered name.
        supervisor: String,
        /// The child's id.
        id: String,
    },
    /// Removes a module's old version once the upgrade is committed (after
    /// the health window: a purge cannot be rolled back).
    Purge {
        /// The module.
        module: String,
        /// Soft: refuse if processes still run the old version; brutal:
        /// kill them.
        #[serde(default)]
        mode: PurgeMode,
    },
}

/// A supervisor's restart strategy and a child's restart type are the
/// runtime's own (serialized by their OTP names).
pub use relive_runtime::supervisor::{Restart, Strategy};

/// How a supervisor stops a child: `"brutal_kill"`, a number of
/// milliseconds, or `"infinity"` in plan files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shutdown {
    /// Killed at once.
    BrutalKill,
    /// Asked to stop, killed after this many milliseconds.
    Millis(u64),
    /// Asked to stop and waited for.
    Infinity,
}

impl Default for Shutdown {
    /// A worker's default: 5000 ms, as OTP's.
    fn default() -> Shutdown {
        Shutdown::Millis(5000)
    }
}

impl Serialize for Shutdown {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Shutdown::BrutalKill => s.serialize_str("brutal_kill"),
            Shutdown::Infinity => s.serialize_str("infinity"),
            Shutdown::Millis(ms) => s.serialize_u64(*ms),
        }
    }
}

impl<'de> Deserialize<'de> for Shutdown {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            Millis(u64),
            Word(String),
        }
        match Text::deserialize(d)? {
            Text::Millis(ms) => Ok(Shutdown::Millis(ms)),
            Text::Word(word) if word == "brutal_kill" => Ok(Shutdown::BrutalKill),
            Text::Word(word) if word == "infinity" => Ok(Shutdown::Infinity),
            Text::Word(word) => Err(serde::de::Error::custom(format!(
                "shutdown: expected \"brutal_kill\", \"infinity\" or milliseconds, found {word:?}"
            ))),
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

/// A supervisor's strategy, intensity and period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Flags {
    /// Its strategy.
    pub strategy: Strategy,
    /// Most restarts within `period_ms`.
    pub intensity: u32,
    /// The window of `intensity`, in milliseconds.
    pub period_ms: u64,
}

impl Default for Flags {
    /// one_for_one, at most 5 restarts in 10 s: a release's top supervisor
    /// when its manifest says nothing.
    fn default() -> Flags {
        Flags { strategy: Strategy::OneForOne, intensity: 5, period_ms: 10_000 }
    }
}

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, at most {} restarts in {} ms", self.strategy, self.intensity, self.period_ms)
    }
}

/// A module process in a supervision tree (also the template of a
/// simple_one_for_one supervisor's children).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessDef {
    /// Its id under its supervisor, and the name it is registered under
    /// (a template's children are not registered).
    pub id: String,
    /// The module it runs (its current version at each start).
    pub module: String,
    /// Its init argument. A template's children get the arguments they
    /// are started with, merged over these when both are tables.
    #[serde(default)]
    pub args: serde_json::Value,
    /// When its supervisor restarts it.
    #[serde(default)]
    pub restart: Restart,
    /// How its supervisor stops it.
    #[serde(default)]
    pub shutdown: Shutdown,
}

/// A supervisor with its children, in start order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorDef {
    /// Its id under its parent, and its registered name.
    pub id: String,
    /// Its strategy, intensity and period.
    pub flags: Flags,
    /// When its parent restarts it.
    #[serde(default)]
    pub restart: Restart,
    /// How its parent stops it (a supervisor's default: infinity).
    #[serde(default = "infinity")]
    pub shutdown: Shutdown,
    /// Its children in start order; for simple_one_for_one, the one
    /// template.
    #[serde(default)]
    pub children: Vec<ChildDef>,
}

fn infinity() -> Shutdown {
    Shutdown::Infinity
}

/// A child in a supervision tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildDef {
    /// A module process.
    Process(ProcessDef),
    /// A supervisor and its subtree.
    Supervisor(SupervisorDef),
}

impl ChildDef {
    /// Its id under its supervisor.
    pub fn id(&self) -> &str {
        match self {
            ChildDef::Process(p) => &p.id,
            ChildDef::Supervisor(s) => &s.id,
        }
    }
}

impl SupervisorDef {
    /// Whether it starts its children at run time (simple_one_for_one).
    pub fn is_simple(&self) -> bool {
        self.flags.strategy == Strategy::SimpleOneForOne
    }

    /// Every module process it starts with its subtree (not the templates
    /// of simple_one_for_one supervisors), depth first in start order.
    pub fn processes(&self) -> Vec<&ProcessDef> {
        fn walk<'a>(sup: &'a SupervisorDef, out: &mut Vec<&'a ProcessDef>) {
            if sup.is_simple() {
                return;
            }
            for child in &sup.children {
                match child {
                    ChildDef::Process(p) => out.push(p),
                    ChildDef::Supervisor(s) => walk(s, out),
                }
            }
        }
        let mut out = Vec::new();
        walk(self, &mut out);
        out
    }

    /// Every supervisor of its subtree with its parent's id, itself first
    /// (parent `None`), depth first in start order.
    pub fn supervisors(&self) -> Vec<(Option<&str>, &SupervisorDef)> {
        fn walk<'a>(
            parent: Option<&'a str>,
            sup: &'a SupervisorDef,
            out: &mut Vec<(Option<&'a str>, &'a SupervisorDef)>,
        ) {
            out.push((parent, sup));
            for child in &sup.children {
                if let ChildDef::Supervisor(s) = child {
                    walk(Some(&sup.id), s, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(None, self, &mut out);
        out
    }

    /// How many children, and for each child supervisor its own, it has.
    fn size(&self) -> usize {
        self.children
            .iter()
            .map(|c| match c {
                ChildDef::Process(_) => 1,
                ChildDef::Supervisor(s) => 1 + s.size(),
            })
            .sum()
    }
}

/// Which processes an `update` moves: `"all"` or a list of registered
/// names in plan files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Processes {
    /// Every process on another version of the module.
    #[default]
    All,
    /// These registered processes.
    Named(Vec<String>),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ProcessesText {
    Word(String),
    Names(Vec<String>),
}

impl Serialize for Processes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Processes::All => ProcessesText::Word("all".into()).serialize(s),
            Processes::Named(names) => ProcessesText::Names(names.clone()).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Processes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match ProcessesText::deserialize(d)? {
            ProcessesText::Word(word) if word == "all" => Ok(Processes::All),
            ProcessesText::Word(word) => Err(serde::de::Error::custom(format!(
                "processes: expected \"all\" or a list of registered names, found {word:?}"
            ))),
            ProcessesText::Names(names) => Ok(Processes::Named(names)),
        }
    }
}

/// How a `purge` treats processes still on old code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurgeMode {
    /// Fail if any process runs the old version.
    #[default]
    Soft,
    /// Kill those processes (each is logged).
    Brutal,
}

/// A plan that cannot be applied as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Two instructions load the same module.
    #[error(
        "instruction {index}: {module} is already loaded by instruction {first}; a plan loads a module once"
    )]
    LoadedTwice {
        /// The second instruction (1-based).
        index: usize,
        /// The first.
        first: usize,
        /// The module.
        module: String,
    },
    /// An update comes before the load of its module.
    #[error(
        "instruction {index}: update of {module} comes before its load (instruction {load}); move it after"
    )]
    UpdateBeforeLoad {
        /// The update (1-based).
        index: usize,
        /// The load.
        load: usize,
        /// The module.
        module: String,
    },
    /// A purge comes before an update that needs the old version.
    #[error(
        "instruction {index}: purge of {module} comes before its update (instruction {update}); purges go last"
    )]
    PurgeBeforeUpdate {
        /// The purge (1-based).
        index: usize,
        /// The update.
        update: usize,
        /// The module.
        module: String,
    },
    /// A field that must not be empty is.
    #[error("instruction {index}: {field} is empty")]
    Empty {
        /// The instruction (1-based).
        index: usize,
        /// The field.
        field: &'static str,
    },
    /// A supervisor in a tree cannot run as described.
    #[error("instruction {index}: supervisor {supervisor}: {problem}")]
    BadSupervisor {
        /// The instruction (1-based).
        index: usize,
        /// The supervisor's id.
        supervisor: String,
        /// What is wrong.
        problem: String,
    },
}

/// Checks a tree an instruction carries: ids and modules not empty, ids
/// unique among siblings, a period of at least 1 ms, and exactly one
/// process template under each simple_one_for_one supervisor.
fn check_tree(index: usize, child: &ChildDef) -> Result<(), PlanError> {
    match child {
        ChildDef::Process(p) => {
            if p.id.is_empty() {
                return Err(PlanError::Empty { index, field: "id" });
            }
            if p.module.is_empty() {
                return Err(PlanError::Empty { index, field: "module" });
            }
            Ok(())
        }
        ChildDef::Supervisor(sup) => {
            if sup.id.is_empty() {
                return Err(PlanError::Empty { index, field: "id" });
            }
            let bad =
                |problem: String| PlanError::BadSupervisor { index, supervisor: sup.id.clone(), problem };
            if sup.flags.period_ms == 0 {
                return Err(bad("period_ms is 0".into()));
            }
            if sup.is_simple() && !matches!(sup.children.as_slice(), [ChildDef::Process(_)]) {
                return Err(bad(format!(
                    "a simple_one_for_one supervisor has exactly one process as the template of its children, not {} children",
                    sup.children.len()
                )));
            }
            let mut ids = std::collections::HashSet::new();
            for child in &sup.children {
                if !ids.insert(child.id()) {
                    return Err(bad(format!("two children have the id {:?}", child.id())));
                }
                check_tree(index, child)?;
            }
            Ok(())
        }
    }
}

impl Instruction {
    /// The module it concerns, if any.
    pub fn module(&self) -> Option<&str> {
        match self {
            Instruction::LoadModule { module, .. }
            | Instruction::AddModule { module, .. }
            | Instruction::Update { module, .. }
            | Instruction::DeleteModule { module }
            | Instruction::StartChild { module, .. }
            | Instruction::Purge { module, .. } => Some(module),
            Instruction::ChangeChild { child: ChildDef::Process(p), .. } => Some(&p.module),
            Instruction::StopChild { .. }
            | Instruction::Restart { .. }
            | Instruction::StartSupervisor { .. }
            | Instruction::ChangeChild { .. }
            | Instruction::ChangeConfig { .. }
            | Instruction::ChangeSupervisor { .. } => None,
        }
    }
}

impl Plan {
    /// A plan named `name`.
    pub fn new(name: impl Into<String>, instructions: Vec<Instruction>) -> Plan {
        Plan { name: name.into(), instructions, releases: None }
    }

    /// Checks the order of instructions (see the module doc).
    ///
    /// # Errors
    /// The first problem, naming the instruction by its 1-based number.
    pub fn validate(&self) -> Result<(), PlanError> {
        let position =
            |wanted: &dyn Fn(&Instruction) -> bool| self.instructions.iter().position(wanted).map(|i| i + 1);
        for (i, instruction) in self.instructions.iter().enumerate() {
            let index = i + 1;
            if instruction.module().is_some_and(str::is_empty) {
                return Err(PlanError::Empty { index, field: "module" });
            }
            match instruction {
                Instruction::LoadModule { module, .. } | Instruction::AddModule { module, .. } => {
                    let first = position(&|other| {
                        matches!(other, Instruction::LoadModule { module: m, .. } | Instruction::AddModule { module: m, .. } if m == module)
                    })
                    .expect("this instruction is one");
                    if first != index {
                        return Err(PlanError::LoadedTwice { index, first, module: module.clone() });
                    }
                }
                Instruction::Update { module, processes, .. } => {
                    let load = position(
                        &|other| matches!(other, Instruction::LoadModule { module: m, .. } | Instruction::AddModule { module: m, .. } if m == module),
                    );
                    if let Some(load) = load.filter(|load| *load > index) {
                        return Err(PlanError::UpdateBeforeLoad { index, load, module: module.clone() });
                    }
                    if matches!(processes, Processes::Named(names) if names.is_empty()) {
                        return Err(PlanError::Empty { index, field: "processes" });
                    }
                }
                Instruction::Purge { module, .. } => {
                    let update = self.instructions[index..].iter().position(
                        |other| matches!(other, Instruction::Update { module: m, .. } if m == module),
                    );
                    if let Some(later) = update {
                        return Err(PlanError::PurgeBeforeUpdate {
                            index,
                            update: index + later + 1,
                            module: module.clone(),
                        });
                    }
                }
                Instruction::StartChild { supervisor, id, .. }
                | Instruction::StopChild { supervisor, id }
                | Instruction::Restart { supervisor, id } => {
                    if supervisor.is_empty() {
                        return Err(PlanError::Empty { index, field: "supervisor" });
                    }
                    if id.is_empty() {
                        return Err(PlanError::Empty { index, field: "id" });
                    }
                }
                Instruction::StartSupervisor { supervisor, spec } => {
                    if supervisor.is_empty() {
                        return Err(PlanError::Empty { index, field: "supervisor" });
                    }
                    check_tree(index, &ChildDef::Supervisor(spec.clone()))?;
                }
                Instruction::ChangeChild { supervisor, child } => {
                    if supervisor.is_empty() {
                        return Err(PlanError::Empty { index, field: "supervisor" });
                    }
                    check_tree(index, child)?;
                }
                Instruction::ChangeConfig { config } => {
                    if !(config.is_null() || config.is_object()) {
                        return Err(PlanError::Empty { index, field: "config (a table)" });
                    }
                }
                Instruction::ChangeSupervisor { supervisor, flags } => {
                    if supervisor.is_empty() {
                        return Err(PlanError::Empty { index, field: "supervisor" });
                    }
                    if flags.period_ms == 0 {
                        return Err(PlanError::Empty { index, field: "period_ms" });
                    }
                }
                Instruction::DeleteModule { .. } => {}
            }
        }
        Ok(())
    }
}

impl fmt::Display for Instruction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Instruction::LoadModule { module, path } => {
                write!(f, "load_module {module} from {}", path.display())
            }
            Instruction::AddModule { module, path } => {
                write!(f, "add_module {module} from {}", path.display())
            }
            Instruction::Update { module, processes, extra, suspend_together } => {
                write!(f, "update {module}: ")?;
                match processes {
                    Processes::All => write!(f, "all processes")?,
                    Processes::Named(names) => write!(f, "processes {}", names.join(", "))?,
                }
                if !extra.is_null() {
                    write!(f, ", extra {extra}")?;
                }
                if *suspend_together {
                    write!(f, ", suspended together")?;
                }
                Ok(())
            }
            Instruction::DeleteModule { module } => write!(f, "delete_module {module}"),
            Instruction::StartChild { supervisor, id, module, args, restart, shutdown } => {
                write!(f, "start_child {id} ({module}")?;
                if !args.is_null() {
                    write!(f, " with {args}")?;
                }
                if *restart != Restart::default() {
                    write!(f, ", {restart}")?;
                }
                if *shutdown != Shutdown::default() {
                    write!(f, ", shutdown {shutdown}")?;
                }
                write!(f, ") under {supervisor}")
            }
            Instruction::StartSupervisor { supervisor, spec } => write!(
                f,
                "start_supervisor {} ({}; {} in its tree) under {supervisor}",
                spec.id,
                spec.flags,
                plural(spec.size(), "child", "children")
            ),
            Instruction::ChangeChild { supervisor, child: ChildDef::Process(p) } => {
                write!(f, "change_child {} under {supervisor}: {} {}", p.id, p.module, p.restart)?;
                if !p.args.is_null() {
                    write!(f, " with {}", p.args)?;
                }
                write!(f, ", shutdown {}", p.shutdown)
            }
            Instruction::ChangeChild { supervisor, child: ChildDef::Supervisor(s) } => write!(
                f,
                "change_child {} under {supervisor}: supervisor {}, {}, {}; {} in its tree",
                s.id,
                s.flags,
                s.restart,
                s.shutdown,
                plural(s.size(), "child", "children")
            ),
            Instruction::ChangeSupervisor { supervisor, flags } => {
                write!(f, "change_supervisor {supervisor}: {flags}")
            }
            Instruction::ChangeConfig { config } => {
                // A configuration may be long: its start is enough to see
                // which one.
                let text = if config.is_null() { "{}".to_string() } else { config.to_string() };
                match text.char_indices().nth(100) {
                    Some((cut, _)) => write!(f, "change_config {}…", &text[..cut]),
                    None => write!(f, "change_config {text}"),
                }
            }
            Instruction::StopChild { supervisor, id } => write!(f, "stop_child {id} under {supervisor}"),
            Instruction::Restart { supervisor, id } => write!(f, "restart {id} under {supervisor}"),
            Instruction::Purge { module, mode: PurgeMode::Soft } => write!(f, "soft_purge {module}"),
            Instruction::Purge { module, mode: PurgeMode::Brutal } => write!(f, "brutal_purge {module}"),
        }
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "plan {}", self.name)?;
        for (i, instruction) in self.instructions.iter().enumerate() {
            writeln!(f, "{:>3}. {instruction}", i + 1)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load(module: &str) -> Instruction {
        Instruction::LoadModule { module: module.into(), path: format!("{module}.so").into() }
    }

    fn update(module: &str) -> Instruction {
        Instruction::Update {
            module: module.into(),
            processes: Processes::All,
            extra: serde_json::Value::Null,
            suspend_together: false,
        }
    }

    #[test]
    fn plans_round_trip_through_json_with_defaults() {
        let text = json!({
            "name": "counter 1 → 2",
            "instruction": [
                {"op": "load_module", "module": "counter", "path": "/x/counter.so"},
                {"op": "update", "module": "counter", "extra": {"default_label": "x"}},
                {"op": "update", "module": "counter", "processes": ["a", "b"], "suspend_together": true},
                {"op": "purge", "module": "counter", "mode": "brutal"},
            ]
        });
        let plan: Plan = serde_json::from_value(text).unwrap();
        assert_eq!(plan.instructions.len(), 4);
        assert!(matches!(&plan.instructions[1], Instruction::Update { processes: Processes::All, .. }));
        assert!(
            matches!(&plan.instructions[2], Instruction::Update { processes: Processes::Named(n), suspend_together: true, .. } if n == &["a", "b"])
        );
        assert_eq!(plan.validate(), Ok(()));
        let again: Plan = serde_json::from_str(&serde_json::to_string(&plan).unwrap()).unwrap();
        assert_eq!(again, plan);
        let shown = plan.to_string();
        assert!(shown.contains("  1. load_module counter from /x/counter.so"), "{shown}");
        assert!(shown.contains("  3. update counter: processes a, b, suspended together"), "{shown}");
        assert!(shown.contains("  4. brutal_purge counter"), "{shown}");
    }

    #[test]
    fn tree_instructions_round_trip_and_their_trees_are_checked() {
        let text = json!({
            "name": "chat 1 → 2",
            "instruction": [
                {"op": "start_supervisor", "supervisor": "chat_sup", "spec": {
                    "id": "rooms",
                    "flags": {"strategy": "simple_one_for_one", "intensity": 10, "period_ms": 1000},
                    "children": [{"process": {"id": "room", "module": "room", "shutdown": "brutal_kill"}}]
                }},
                {"op": "change_child", "supervisor": "chat_sup", "child": {"process": {
                    "id": "lobby", "module": "lobby", "args": {"x": 1}, "restart": "transient", "shutdown": 250
                }}},
                {"op": "change_supervisor", "supervisor": "chat_sup",
                 "flags": {"strategy": "one_for_all", "intensity": 1, "period_ms": 5000}},
                {"op": "start_child", "supervisor": "chat_sup", "id": "log", "module": "log"},
            ]
        });
        let plan: Plan = serde_json::from_value(text).unwrap();
        assert_eq!(plan.validate(), Ok(()));
        let Instruction::StartSupervisor { spec, .. } = &plan.instructions[0] else { panic!() };
        assert_eq!(spec.shutdown, Shutdown::Infinity, "a supervisor's default");
        assert!(
            matches!(&spec.children[0], ChildDef::Process(p) if p.shutdown == Shutdown::BrutalKill && p.restart == Restart::Permanent)
        );
        assert!(
            matches!(
                &plan.instructions[3],
                Instruction::StartChild { restart: Restart::Permanent, shutdown: Shutdown::Millis(5000), .. }
            ),
            "defaults of a start_child written before restart and shutdown existed"
        );
        let again: Plan = serde_json::from_str(&serde_json::to_string(&plan).unwrap()).unwrap();
        assert_eq!(again, plan);
        let shown = plan.to_string();
        assert!(shown.contains("  1. start_supervisor rooms (simple_one_for_one, at most 10 restarts in 1000 ms; 1 child in its tree) under chat_sup"), "{shown}");
        assert!(
            shown.contains(
                "  2. change_child lobby under chat_sup: lobby transient with {\"x\":1}, shutdown 250 ms"
            ),
            "{shown}"
        );
        assert!(
            shown.contains("  3. change_supervisor chat_sup: one_for_all, at most 1 restarts in 5000 ms"),
            "{shown}"
        );

        let mut two_templates = plan.clone();
        let Instruction::StartSupervisor { spec, .. } = &mut two_templates.instructions[0] else { panic!() };
        spec.children.push(spec.children[0].clone());
        let error = two_templates.validate().unwrap_err().to_string();
        assert!(
            error.starts_with(
                "instruction 1: supervisor rooms: a simple_one_for_one supervisor has exactly one process"
            ),
            "{error}"
        );
        let bad_shutdown = json!({"name": "x", "instruction": [{"op": "start_child", "supervisor": "s", "id": "a", "module": "m", "shutdown": "later"}]});
        assert!(serde_json::from_value::<Plan>(bad_shutdown).is_err());
    }

    #[test]
    fn unknown_ops_fields_and_process_selectors_are_refused() {
        for bad in [
            json!({"name": "x", "instruction": [{"op": "reload", "module": "m"}]}),
            json!({"name": "x", "instruction": [{"op": "update", "module": "m", "procs": "all"}]}),
            json!({"name": "x", "instruction": [{"op": "update", "module": "m", "processes": "some"}]}),
        ] {
            assert!(serde_json::from_value::<Plan>(bad.clone()).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn validation_names_the_instruction_at_fault() {
        let twice = Plan::new("p", vec![load("a"), update("a"), load("a")]);
        assert_eq!(twice.validate(), Err(PlanError::LoadedTwice { index: 3, first: 1, module: "a".into() }));
        let early = Plan::new("p", vec![update("a"), load("a")]);
        assert_eq!(
            early.validate(),
            Err(PlanError::UpdateBeforeLoad { index: 1, load: 2, module: "a".into() })
        );
        let purge = Instruction::Purge { module: "a".into(), mode: PurgeMode::Soft };
        let purge_first = Plan::new("p", vec![load("a"), purge, update("a")]);
        assert_eq!(
            purge_first.validate(),
            Err(PlanError::PurgeBeforeUpdate { index: 2, update: 3, module: "a".into() })
        );
        let nameless =
            Plan::new("p", vec![Instruction::StopChild { supervisor: "sup".into(), id: String::new() }]);
        assert_eq!(nameless.validate(), Err(PlanError::Empty { index: 1, field: "id" }));
        assert!(
            PlanError::LoadedTwice { index: 3, first: 1, module: "a".into() }
                .to_string()
                .contains("instruction 3")
        );
    }
}
