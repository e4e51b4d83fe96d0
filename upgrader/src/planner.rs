//! The planner: from the release running now and the one to go to, the
//! plan that takes the node there live (relive's relup), or the reason only
//! a restart can.
//!
//! It speaks in [`ReleaseView`]s, the part of a release it needs, so that
//! relive-releases (plain data and files) and this crate stay apart; the
//! CLI makes views from manifests.
//!
//! The generated order follows OTP's relup: new modules are added and
//! changed ones loaded first (a load error aborts before any process is
//! touched), then the changed modules' processes are updated, then
//! processes that are gone stop and new ones start, then modules that are
//! gone are deleted. Generated plans purge nothing: the replaced code stays
//! resident as the old version, so the upgrade can be rolled back live, and
//! it goes when a later version is loaded (the code server drops an old
//! version nobody runs). A release that must purge says so in explicit
//! instructions, which replace all of this.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::plan::{Instruction, Plan, PlanError, Processes, ReleaseId, ReleaseStep};

/// What the planner needs of a release.
#[derive(Clone, Debug, PartialEq)]
pub struct ReleaseView {
    /// The application's name.
    pub name: String,
    /// Its version.
    pub version: semver::Version,
    /// The versions it upgrades from live.
    pub upgrade_from: Option<semver::VersionReq>,
    /// Its modules.
    pub modules: Vec<ModuleView>,
    /// The processes it runs under its top supervisor.
    pub processes: Vec<ProcessView>,
    /// Explicit instructions (each a JSON object with `op`), replacing the
    /// generated plan.
    pub instructions: Vec<serde_json::Value>,
}

/// A module of a release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleView {
    /// Its name.
    pub name: String,
    /// sha256 of its library.
    pub sha256: String,
    /// Where its library is.
    pub library: PathBuf,
}

/// A process of a release.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessView {
    /// Its name (its id under the supervisor).
    pub name: String,
    /// The module it runs.
    pub module: String,
    /// Its init argument.
    pub args: serde_json::Value,
}

/// What the planner decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Planned {
    /// A live upgrade.
    Upgrade {
        /// The plan.
        plan: Plan,
        /// Whether it came from the release's own instructions.
        explicit: bool,
    },
    /// Only a restart on the new release can get there.
    Restart {
        /// Why.
        reason: String,
    },
}

/// Why no plan could be made.
#[derive(Debug, thiserror::Error)]
pub enum PlannerError {
    /// The two releases are of different applications.
    #[error(
        "release {to} is of application {to_name}, the node runs {from_name}: deploy a release of {from_name}"
    )]
    OtherApplication {
        /// The running one.
        from_name: String,
        /// The new one's application.
        to_name: String,
        /// The new one, as name-version.
        to: String,
    },
    /// An explicit instruction does not read as one.
    #[error("release {release}: instruction {index} is not a valid instruction: {error}")]
    BadInstruction {
        /// The release.
        release: String,
        /// Its number (1-based).
        index: usize,
        /// Why.
        error: String,
    },
    /// The plan is malformed.
    #[error("release {release}: {error}")]
    Invalid {
        /// The release.
        release: String,
        /// What is wrong.
        error: PlanError,
    },
}

/// The supervisor a release's processes run under: `<name>_sup`.
pub fn supervisor_name(release: &str) -> String {
    format!("{release}_sup")
}

/// Plans the way from `from` (running) to `to`.
///
/// # Errors
/// [`PlannerError`]: another application, or explicit instructions that do
/// not make a valid plan.
pub fn plan(from: &ReleaseView, to: &ReleaseView) -> Result<Planned, PlannerError> {
    let to_label = format!("{}-{}", to.name, to.version);
    if from.name != to.name {
        return Err(PlannerError::OtherApplication {
            from_name: from.name.clone(),
            to_name: to.name.clone(),
            to: to_label,
        });
    }
    let name = format!("{} {} → {}", to.name, from.version, to.version);
    // Going down is live when the newer release says it upgrades live from
    // the older one (OTP's relup holds both directions): the same diff,
    // with `code_change` of the older code reading what the newer one's
    // `downgrade` writes.
    let down = to.version < from.version;
    let (newer, older) = if down { (from, to) } else { (to, from) };
    let newer_label = format!("{}-{}", newer.name, newer.version);
    match &newer.upgrade_from {
        Some(requirement) if requirement.matches(&older.version) => {}
        Some(requirement) => {
            return Ok(Planned::Restart {
                reason: format!(
                    "{newer_label} upgrades live from {requirement}, not from {}: restart the node on {to_label}",
                    older.version
                ),
            });
        }
        None => {
            return Ok(Planned::Restart {
                reason: format!(
                    "{newer_label} declares no upgrade_from: only a restart goes between it and {}",
                    older.version
                ),
            });
        }
    }
    let invalid = |error| PlannerError::Invalid { release: to_label.clone(), error };
    // A release's explicit instructions describe its way up; a way down is
    // generated.
    if !down && !to.instructions.is_empty() {
        let instructions = to
            .instructions
            .iter()
            .enumerate()
            .map(|(i, value)| {
                let mut value = value.clone();
                // A release's author cannot know where the node keeps its
                // libraries: a load without `path` loads the release's own.
                if matches!(value["op"].as_str(), Some("load_module" | "add_module"))
                    && value.get("path").is_none()
                    && let Some(module) =
                        to.modules.iter().find(|m| Some(m.name.as_str()) == value["module"].as_str())
                {
                    value["path"] = serde_json::Value::String(module.library.display().to_string());
                }
                serde_json::from_value::<Instruction>(value).map_err(|e| PlannerError::BadInstruction {
                    release: to_label.clone(),
                    index: i + 1,
                    error: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let plan = Plan { releases: Some(step(from, to)), ..Plan::new(name, instructions) };
        plan.validate().map_err(invalid)?;
        return Ok(Planned::Upgrade { plan, explicit: true });
    }
    let plan = Plan { releases: Some(step(from, to)), ..Plan::new(name, generate(from, to)) };
    plan.validate().map_err(invalid)?;
    Ok(Planned::Upgrade { plan, explicit: false })
}

fn step(from: &ReleaseView, to: &ReleaseView) -> ReleaseStep {
    let id = |view: &ReleaseView| ReleaseId { name: view.name.clone(), version: view.version.clone() };
    ReleaseStep { from: id(from), to: id(to) }
}

fn generate(from: &ReleaseView, to: &ReleaseView) -> Vec<Instruction> {
    let old_module = |name: &str| from.modules.iter().find(|m| m.name == name);
    let new_module = |name: &str| to.modules.iter().find(|m| m.name == name);
    let supervisor = supervisor_name(&to.name);
    let mut loads = Vec::new();
    let mut updates = Vec::new();
    for module in &to.modules {
        match old_module(&module.name) {
            None => loads
                .push(Instruction::AddModule { module: module.name.clone(), path: module.library.clone() }),
            Some(old) if old.sha256 != module.sha256 => {
                loads.push(Instruction::LoadModule {
                    module: module.name.clone(),
                    path: module.library.clone(),
                });
                updates.push(Instruction::Update {
                    module: module.name.clone(),
                    processes: Processes::All,
                    extra: serde_json::Value::Null,
                    suspend_together: false,
                });
            }
            Some(_) => {}
        }
    }
    let mut stops = Vec::new();
    let mut starts = Vec::new();
    // Sets, not scans: a release may run tens of thousands of processes.
    let old_processes: HashSet<(&str, &str)> =
        from.processes.iter().map(|p| (p.name.as_str(), p.module.as_str())).collect();
    let new_processes: HashSet<(&str, &str)> =
        to.processes.iter().map(|p| (p.name.as_str(), p.module.as_str())).collect();
    for process in &from.processes {
        let kept = new_processes.contains(&(process.name.as_str(), process.module.as_str()));
        if !kept {
            stops.push(Instruction::StopChild { supervisor: supervisor.clone(), id: process.name.clone() });
        }
    }
    for process in &to.processes {
        let existed = old_processes.contains(&(process.name.as_str(), process.module.as_str()));
        if !existed {
            starts.push(Instruction::StartChild {
                supervisor: supervisor.clone(),
                id: process.name.clone(),
                module: process.module.clone(),
                args: process.args.clone(),
            });
        }
    }
    let mut deletes = Vec::new();
    for module in &from.modules {
        if new_module(&module.name).is_none() {
            deletes.push(Instruction::DeleteModule { module: module.name.clone() });
        }
    }
    loads.into_iter().chain(updates).chain(stops).chain(starts).chain(deletes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn module(name: &str, sha: &str) -> ModuleView {
        ModuleView { name: name.into(), sha256: sha.into(), library: format!("/code/{sha}.so").into() }
    }

    fn process(name: &str, module: &str) -> ProcessView {
        ProcessView { name: name.into(), module: module.into(), args: json!({}) }
    }

    fn release(
        version: &str,
        upgrade_from: Option<&str>,
        modules: Vec<ModuleView>,
        processes: Vec<ProcessView>,
    ) -> ReleaseView {
        ReleaseView {
            name: "kv".into(),
            version: version.parse().unwrap(),
            upgrade_from: upgrade_from.map(|r| r.parse().unwrap()),
            modules,
            processes,
            instructions: Vec::new(),
        }
    }

    #[test]
    fn changed_added_and_removed_modules_and_processes_in_relup_order() {
        let from = release(
            "1.0.0",
            None,
            vec![module("store", "a1"), module("proto", "b1"), module("legacy", "c1")],
            vec![process("store", "store"), process("old_worker", "legacy")],
        );
        let to = release(
            "1.1.0",
            Some(">=1.0.0, <1.1.0"),
            vec![module("store", "a2"), module("proto", "b1"), module("stats", "d1")],
            vec![process("store", "store"), process("stats", "stats")],
        );
        let Planned::Upgrade { plan, explicit: false } = plan(&from, &to).unwrap() else {
            panic!("expected a live upgrade")
        };
        let text: Vec<String> = plan.instructions.iter().map(|i| i.to_string()).collect();
        assert_eq!(
            text,
            vec![
                "load_module store from /code/a2.so",
                "add_module stats from /code/d1.so",
                "update store: all processes",
                "stop_child old_worker under kv_sup",
                "start_child stats (stats with {}) under kv_sup",
                "delete_module legacy",
            ]
        );
        assert_eq!(plan.name, "kv 1.0.0 → 1.1.0");
    }

    #[test]
    fn outside_upgrade_from_or_without_it_only_a_restart() {
        let from = release("1.0.0", None, vec![module("store", "a1")], vec![]);
        let to = release("2.0.0", Some(">=1.1.0"), vec![module("store", "a2")], vec![]);
        let Planned::Restart { reason } = plan(&from, &to).unwrap() else { panic!() };
        assert!(reason.contains(">=1.1.0") && reason.contains("1.0.0"), "{reason}");
        let to = release("2.0.0", None, vec![module("store", "a2")], vec![]);
        assert!(matches!(plan(&from, &to).unwrap(), Planned::Restart { .. }));
    }

    #[test]
    fn explicit_instructions_replace_the_generated_plan_and_are_checked() {
        let from = release("1.0.0", None, vec![module("store", "a1")], vec![]);
        let mut to = release("1.0.1", Some("^1"), vec![module("store", "a2")], vec![]);
        to.instructions = vec![
            json!({"op": "load_module", "module": "store", "path": "/code/a2.so"}),
            json!({"op": "update", "module": "store", "extra": {"ttl": 5}}),
        ];
        let Planned::Upgrade { plan, explicit: true } = plan(&from, &to).unwrap() else { panic!() };
        assert_eq!(plan.instructions.len(), 2);
        to.instructions.push(json!({"op": "teleport"}));
        let error = plan_error(&from, &to);
        assert!(error.contains("instruction 3"), "{error}");
        to.instructions = vec![
            json!({"op": "update", "module": "store"}),
            json!({"op": "load_module", "module": "store", "path": "/x.so"}),
        ];
        let error = plan_error(&from, &to);
        assert!(error.contains("before its load"), "{error}");
        // Without a path, a load takes the release's own library.
        to.instructions = vec![
            json!({"op": "load_module", "module": "store"}),
            json!({"op": "update", "module": "store", "processes": ["a"]}),
        ];
        let Planned::Upgrade { plan: filled, .. } = super::plan(&from, &to).unwrap() else { panic!() };
        assert!(
            matches!(&filled.instructions[0], Instruction::LoadModule { path, .. } if *path == to.modules[0].library),
            "{filled}"
        );
    }

    fn plan_error(from: &ReleaseView, to: &ReleaseView) -> String {
        plan(from, to).unwrap_err().to_string()
    }

    #[test]
    fn going_down_is_live_when_the_newer_release_upgrades_from_the_older() {
        let old = release("1.0.0", None, vec![module("store", "a1")], vec![process("store", "store")]);
        let new =
            release("1.1.0", Some("^1.0.0"), vec![module("store", "a2")], vec![process("store", "store")]);
        let Planned::Upgrade { plan, .. } = plan(&new, &old).unwrap() else {
            panic!("expected a live downgrade")
        };
        let text: Vec<String> = plan.instructions.iter().map(|i| i.to_string()).collect();
        assert_eq!(text, vec!["load_module store from /code/a1.so", "update store: all processes"]);
        assert_eq!(plan.name, "kv 1.1.0 → 1.0.0");
        // What undoing it returns to travels with the plan.
        let step = plan.releases.expect("the planner names the releases");
        assert_eq!((step.from.to_string(), step.to.to_string()), ("kv 1.1.0".into(), "kv 1.0.0".into()));
        let unrelated = release("2.0.0", Some(">=1.1.0"), vec![module("store", "a3")], vec![]);
        let Planned::Restart { reason } = super::plan(&unrelated, &old).unwrap() else {
            panic!("expected a restart")
        };
        assert!(reason.contains(">=1.1.0") && reason.contains("1.0.0"), "{reason}");
    }

    #[test]
    fn another_application_is_refused() {
        let from = release("1.0.0", None, vec![], vec![]);
        let mut to = release("1.1.0", Some("*"), vec![], vec![]);
        to.name = "chat".into();
        let error = plan(&from, &to).unwrap_err().to_string();
        assert!(error.contains("chat") && error.contains("kv"), "{error}");
    }
}
