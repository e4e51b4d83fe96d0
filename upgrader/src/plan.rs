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
            Instruction::StopChild { .. } | Instruction::Restart { .. } => None,
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
            Instruction::StartChild { supervisor, id, module, args } => {
                write!(f, "start_child {id} ({module}")?;
                if !args.is_null() {
                    write!(f, " with {args}")?;
                }
                write!(f, ") under {supervisor}")
            }
            Instruction::StopChild { supervisor, id } => write!(f, "stop_child {id} under {supervisor}"),
            Instruction::Restart { supervisor, id } => write!(f, "restart {id} under {supervisor}"),
            Instruction::Purge { module, mode: PurgeMode::Soft } => write!(f, "soft_purge {module}"),
            Instruction::Purge { module, mode: PurgeMode::Brutal } => write!(f, "brutal_purge {module}"),
        }
    }
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
