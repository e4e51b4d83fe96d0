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
//! touched), then processes that are gone stop (as relup stops a removed
//! application before any code changes: what they would still send is in
//! the old release's protocol, which updated code may not decode), then the
//! changed modules' processes are updated, then new processes start, then
//! modules that are gone are deleted. The supervision trees are compared
//! supervisor by supervisor (a child is the same child when its supervisor
//! and id are, and, for a process, its module): a changed child spec (args,
//! restart, shutdown) or supervisor flags change in place (`change_child`,
//! `change_supervisor`: nothing running restarts, the new spec applies at
//! the next restart, as OTP's supervisor `code_change`); a supervisor
//! present only in the new release starts with its whole subtree
//! (`start_supervisor`), one only in the old stops with its children
//! (`stop_child` on it); children that are gone stop last started first. A
//! child that changes module, kind or supervisor stops and starts again,
//! and so does a supervisor that turns to or from simple_one_for_one or
//! whose template changes module (its dynamic children go with it). A
//! changed `[config]` is set after the stops and before the starts
//! (`change_config`: every process still running hears of it through
//! `config_change`; the new ones read it in `init`). Generated plans purge
//! nothing: the replaced code stays resident as the old version, so the
//! upgrade can be rolled back live, and it goes when a later version is
//! loaded (the code server drops an old version nobody runs). A release
//! that must purge says so in explicit instructions, which replace all of
//! this.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::plan::{
    ChildDef, Instruction, Plan, PlanError, ProcessDef, Processes, ReleaseId, ReleaseStep, SupervisorDef,
};

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
    /// Its supervision tree: the top supervisor ([`supervisor_name`]) with
    /// its children.
    pub tree: SupervisorDef,
    /// Its application configuration (a JSON object; `null`: none).
    pub config: serde_json::Value,
    /// Explicit instructions (each a JSON object with `op`), replacing the
    /// generated plan.
    pub instructions: Vec<serde_json::Value>,
}

impl ReleaseView {
    /// Every module process its tree starts (not the templates of
    /// simple_one_for_one supervisors), in start order.
    pub fn processes(&self) -> Vec<&ProcessDef> {
        self.tree.processes()
    }
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
    if from.tree.is_simple() != to.tree.is_simple() {
        return Ok(Planned::Restart {
            reason: format!(
                "the top supervisor {} goes from {} to {}, and a running supervisor cannot turn to or from simple_one_for_one: restart the node on {to_label}",
                to.tree.id, from.tree.flags.strategy, to.tree.flags.strategy
            ),
        });
    }
    let invalid = |error| PlannerError::Invalid { release: to_label.clone(), error };
    // A release's configuration is its own, whatever its instructions say:
    // an explicit plan without `change_config` gets one at its end when the
    // configuration changes, and one without `config` gets the release's.
    let config_changed = !same_config(&from.config, &to.config);
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
                if value["op"].as_str() == Some("change_config") && value.get("config").is_none() {
                    value["config"] = to.config.clone();
                }
                serde_json::from_value::<Instruction>(value).map_err(|e| PlannerError::BadInstruction {
                    release: to_label.clone(),
                    index: i + 1,
                    error: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut instructions = instructions;
        if config_changed && !instructions.iter().any(|i| matches!(i, Instruction::ChangeConfig { .. })) {
            instructions.push(Instruction::ChangeConfig { config: to.config.clone() });
        }
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
    let mut tree = TreeDiff::default();
    tree.supervisor(&from.tree, &to.tree);
    // Last started first: the old tree's order, reversed.
    tree.stops.reverse();
    let mut deletes = Vec::new();
    for module in &from.modules {
        if new_module(&module.name).is_none() {
            deletes.push(Instruction::DeleteModule { module: module.name.clone() });
        }
    }
    // After the stops, before the starts: the processes that run on get
    // config_change, the new ones read the new configuration in init.
    let config = (!same_config(&from.config, &to.config))
        .then(|| Instruction::ChangeConfig { config: to.config.clone() });
    // The stops come before the updates, as OTP's relup stops a removed
    // application before it loads code: a process that is going away
    // still speaks the old release's protocol, and a message it sent to
    // code already changed would be one that code cannot decode (dropped,
    // and counted lost). Stopped first, it is simply gone, which a sender
    // sees as it would any process exit.
    loads
        .into_iter()
        .chain(tree.stops)
        .chain(updates)
        .chain(tree.changes)
        .chain(config)
        .chain(tree.starts)
        .chain(deletes)
        .collect()
}

/// Whether two configurations are the same (none is an empty table).
fn same_config(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    let empty = serde_json::Value::Object(Default::default());
    let norm = |v: &serde_json::Value| if v.is_null() { empty.clone() } else { v.clone() };
    norm(a) == norm(b)
}

/// The instructions that turn one running supervision tree into another.
#[derive(Default)]
struct TreeDiff {
    changes: Vec<Instruction>,
    /// In the old tree's start order (reversed by the caller).
    stops: Vec<Instruction>,
    /// In the new tree's start order.
    starts: Vec<Instruction>,
}

impl TreeDiff {
    /// `old` and `new` are the same running supervisor (same id and
    /// parent, both or neither simple_one_for_one, the same template).
    fn supervisor(&mut self, old: &SupervisorDef, new: &SupervisorDef) {
        if old.flags != new.flags {
            self.changes.push(Instruction::ChangeSupervisor { supervisor: new.id.clone(), flags: new.flags });
        }
        if new.is_simple() {
            // Its template: the same process (checked by `same_child`),
            // maybe with other args, restart or shutdown.
            if old.children != new.children
                && let Some(template) = new.children.first()
            {
                self.changes
                    .push(Instruction::ChangeChild { supervisor: new.id.clone(), child: template.clone() });
            }
            return;
        }
        // Maps, not scans: a release may run tens of thousands of processes.
        let old_children: HashMap<&str, &ChildDef> = old.children.iter().map(|c| (c.id(), c)).collect();
        let new_children: HashMap<&str, &ChildDef> = new.children.iter().map(|c| (c.id(), c)).collect();
        for child in &old.children {
            let kept = new_children.get(child.id()).is_some_and(|new| same_child(child, new));
            if !kept {
                self.stops
                    .push(Instruction::StopChild { supervisor: old.id.clone(), id: child.id().to_string() });
            }
        }
        for child in &new.children {
            match old_children.get(child.id()).filter(|old| same_child(old, child)) {
                None => self.starts.push(start(&new.id, child)),
                Some(old) => {
                    if let (ChildDef::Supervisor(old_sup), ChildDef::Supervisor(new_sup)) = (old, child) {
                        self.supervisor(old_sup, new_sup);
                    }
                    // A process's spec, or the spec a parent restarts a
                    // supervisor from: the whole new subtree, or a restart
                    // would bring the old one back.
                    if *old != child {
                        self.changes.push(Instruction::ChangeChild {
                            supervisor: new.id.clone(),
                            child: child.clone(),
                        });
                    }
                }
            }
        }
    }
}

/// Whether a running child `old` can become `new` in place.
fn same_child(old: &ChildDef, new: &ChildDef) -> bool {
    match (old, new) {
        (ChildDef::Process(old), ChildDef::Process(new)) => old.module == new.module,
        (ChildDef::Supervisor(old), ChildDef::Supervisor(new)) => {
            old.is_simple() == new.is_simple()
                && (!new.is_simple()
                    || matches!(
                        (old.children.first(), new.children.first()),
                        (Some(ChildDef::Process(a)), Some(ChildDef::Process(b))) if a.id == b.id && a.module == b.module
                    ))
        }
        _ => false,
    }
}

/// The instruction that starts `child` under `supervisor`.
fn start(supervisor: &str, child: &ChildDef) -> Instruction {
    match child {
        ChildDef::Process(p) => Instruction::StartChild {
            supervisor: supervisor.to_string(),
            id: p.id.clone(),
            module: p.module.clone(),
            args: p.args.clone(),
            restart: p.restart,
            shutdown: p.shutdown,
        },
        ChildDef::Supervisor(s) => {
            Instruction::StartSupervisor { supervisor: supervisor.to_string(), spec: s.clone() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Flags, Restart, Shutdown, Strategy};
    use serde_json::json;

    fn module(name: &str, sha: &str) -> ModuleView {
        ModuleView { name: name.into(), sha256: sha.into(), library: format!("/code/{sha}.so").into() }
    }

    fn process(name: &str, module: &str) -> ChildDef {
        ChildDef::Process(ProcessDef {
            id: name.into(),
            module: module.into(),
            args: json!({}),
            restart: Restart::Permanent,
            shutdown: Shutdown::default(),
        })
    }

    fn supervisor(id: &str, strategy: Strategy, children: Vec<ChildDef>) -> SupervisorDef {
        SupervisorDef {
            id: id.into(),
            flags: Flags { strategy, ..Flags::default() },
            restart: Restart::Permanent,
            shutdown: Shutdown::Infinity,
            children,
        }
    }

    fn release(
        version: &str,
        upgrade_from: Option<&str>,
        modules: Vec<ModuleView>,
        processes: Vec<ChildDef>,
    ) -> ReleaseView {
        ReleaseView {
            name: "kv".into(),
            version: version.parse().unwrap(),
            upgrade_from: upgrade_from.map(|r| r.parse().unwrap()),
            modules,
            tree: supervisor("kv_sup", Strategy::OneForOne, processes),
            config: serde_json::Value::Null,
            instructions: Vec::new(),
        }
    }

    fn bump(mut view: ReleaseView) -> ReleaseView {
        view.version = "1.0.1".parse().unwrap();
        view.upgrade_from = Some("^1".parse().unwrap());
        view
    }

    fn lines(plan: &Plan) -> Vec<String> {
        plan.instructions.iter().map(|i| i.to_string()).collect()
    }

    #[test]
    fn changed_child_specs_and_supervisor_flags_change_in_place() {
        let m = vec![module("store", "a1")];
        let from =
            release("1.0.0", None, m.clone(), vec![process("store", "store"), process("cache", "store")]);
        let mut to =
            release("1.1.0", Some("^1"), m, vec![process("store", "store"), process("cache", "store")]);
        let ChildDef::Process(store) = &mut to.tree.children[0] else { panic!() };
        store.args = json!({"shards": 8});
        store.restart = Restart::Transient;
        let ChildDef::Process(cache) = &mut to.tree.children[1] else { panic!() };
        cache.shutdown = Shutdown::BrutalKill;
        to.tree.flags = Flags { strategy: Strategy::RestForOne, intensity: 2, period_ms: 500 };
        let Planned::Upgrade { plan, .. } = plan(&from, &to).unwrap() else {
            panic!("expected a live upgrade")
        };
        assert_eq!(
            lines(&plan),
            [
                "change_supervisor kv_sup: rest_for_one, at most 2 restarts in 500 ms",
                "change_child store under kv_sup: store transient with {\"shards\":8}, shutdown 5000 ms",
                "change_child cache under kv_sup: store permanent with {}, shutdown brutal_kill",
            ]
        );
        // The way back changes them back.
        let Planned::Upgrade { plan: back, .. } = super::plan(&to, &from).unwrap() else { panic!() };
        assert_eq!(
            lines(&back),
            [
                "change_supervisor kv_sup: one_for_one, at most 5 restarts in 10000 ms",
                "change_child store under kv_sup: store permanent with {}, shutdown 5000 ms",
                "change_child cache under kv_sup: store permanent with {}, shutdown 5000 ms",
            ]
        );
        // A top supervisor cannot turn simple_one_for_one live.
        let mut simple = to.clone();
        simple.tree = supervisor("kv_sup", Strategy::SimpleOneForOne, vec![process("store", "store")]);
        let Planned::Restart { reason } = super::plan(&from, &simple).unwrap() else { panic!() };
        assert!(reason.contains("simple_one_for_one"), "{reason}");
    }

    #[test]
    fn subtrees_start_and_stop_whole_and_nested_changes_reach_the_parents_spec() {
        let m = vec![module("store", "a1"), module("room", "r1")];
        let rooms = |history: u64| {
            ChildDef::Supervisor(supervisor(
                "rooms",
                Strategy::SimpleOneForOne,
                vec![ChildDef::Process(ProcessDef {
                    args: json!({ "history": history }),
                    ..match process("room", "room") {
                        ChildDef::Process(p) => p,
                        _ => unreachable!(),
                    }
                })],
            ))
        };
        let pool =
            |workers: Vec<ChildDef>| ChildDef::Supervisor(supervisor("pool", Strategy::OneForAll, workers));
        let from = release(
            "1.0.0",
            None,
            m.clone(),
            vec![
                process("store", "store"),
                rooms(5),
                pool(vec![process("w1", "store"), process("w2", "store")]),
            ],
        );
        let to = release(
            "2.0.0",
            Some("^1"),
            m,
            vec![
                process("store", "store"),
                rooms(9),
                pool(vec![process("w1", "room"), process("w3", "store")]),
                ChildDef::Supervisor(supervisor("extra", Strategy::OneForOne, vec![process("e", "store")])),
            ],
        );
        let Planned::Upgrade { plan, .. } = plan(&from, &to).unwrap() else { panic!() };
        assert_eq!(
            lines(&plan),
            [
                "stop_child w2 under pool",
                "stop_child w1 under pool",
                "change_child room under rooms: room permanent with {\"history\":9}, shutdown 5000 ms",
                "change_child rooms under kv_sup: supervisor simple_one_for_one, at most 5 restarts in 10000 ms, permanent, infinity; 1 child in its tree",
                "change_child pool under kv_sup: supervisor one_for_all, at most 5 restarts in 10000 ms, permanent, infinity; 2 children in its tree",
                "start_child w1 (room with {}) under pool",
                "start_child w3 (store with {}) under pool",
                "start_supervisor extra (one_for_one, at most 5 restarts in 10000 ms; 1 child in its tree) under kv_sup",
            ]
        );
        // And back: the subtree that came stops whole, the one that went
        // starts whole.
        let Planned::Upgrade { plan: back, .. } = super::plan(&to, &from).unwrap() else { panic!() };
        let back = lines(&back);
        assert!(back.contains(&"stop_child extra under kv_sup".to_string()), "{back:#?}");
        assert!(!back.iter().any(|l| l.contains("stop_child e ")), "a subtree stops with its top: {back:#?}");
        // A template that changes module replaces its supervisor.
        let mut moved = from.clone();
        moved.tree.children[1] = ChildDef::Supervisor(supervisor(
            "rooms",
            Strategy::SimpleOneForOne,
            vec![process("room", "store")],
        ));
        let Planned::Upgrade { plan, .. } = super::plan(&from, &bump(moved)).unwrap() else { panic!() };
        assert_eq!(
            lines(&plan),
            [
                "stop_child rooms under kv_sup",
                "start_supervisor rooms (simple_one_for_one, at most 5 restarts in 10000 ms; 1 child in its tree) under kv_sup"
            ]
        );
        plan.validate().unwrap();
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
                "stop_child old_worker under kv_sup",
                "update store: all processes",
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
