//! Supervision trees made real: a [`SupervisorDef`] or [`ChildDef`] (what
//! a release view and a plan describe) turned into the runtime's
//! [`SupervisorSpec`] and [`ChildSpec`]s. The node boots a release's tree
//! with [`start`]; the controller builds the specs of `start_child`,
//! `start_supervisor` and `change_child` with [`child_spec`], so a child
//! started by an upgrade, or restarted after one, is built exactly as at
//! boot.
//!
//! Every process child runs the *current* version of its module at each
//! start, with its `args` as init argument (MessagePack), and is registered
//! under its id; every supervisor registers itself under its id in its own
//! `init`, before its children start, so they can call it by name.
//!
//! The template of a simple_one_for_one supervisor is not registered (its
//! children share its id). A child started from it gets the arguments it
//! was started with (a [`Payload`] from a module's `{"start_child": ARGS}`
//! call, a JSON value or a `Payload` from a native caller) merged over the
//! template's `args`: when both are tables, the child's keys win and the
//! template's other keys stay; otherwise the child's arguments replace the
//! template's, unless they are nil. The merge runs at each start, so a
//! template changed by an upgrade applies to the restarts that follow.

use std::sync::Arc;
use std::time::Duration;

use relive_runtime::module::{json_to_payload, payload_to_json};
use relive_runtime::supervisor::{self, ChildSpec, SupervisorSpec};
use relive_runtime::{CodeServer, Message, Node, Payload, Pid};

use crate::plan::{ChildDef, Flags, ProcessDef, Shutdown, Strategy, SupervisorDef};

impl Shutdown {
    /// The runtime's shutdown policy.
    pub fn to_runtime(self) -> supervisor::Shutdown {
        match self {
            Shutdown::BrutalKill => supervisor::Shutdown::BrutalKill,
            Shutdown::Millis(ms) => supervisor::Shutdown::Timeout(Duration::from_millis(ms)),
            Shutdown::Infinity => supervisor::Shutdown::Infinity,
        }
    }
}

impl Flags {
    /// The runtime's flags.
    pub fn to_runtime(self) -> supervisor::Flags {
        supervisor::Flags {
            strategy: self.strategy,
            intensity: self.intensity,
            period: Duration::from_millis(self.period_ms),
        }
    }

    /// From the runtime's flags (a period under 1 ms counts as 1 ms).
    pub fn from_runtime(flags: supervisor::Flags) -> Flags {
        let strategy = match flags.strategy {
            supervisor::Strategy::OneForOne => Strategy::OneForOne,
            supervisor::Strategy::OneForAll => Strategy::OneForAll,
            supervisor::Strategy::RestForOne => Strategy::RestForOne,
            supervisor::Strategy::SimpleOneForOne => Strategy::SimpleOneForOne,
        };
        let period_ms = u64::try_from(flags.period.as_millis()).unwrap_or(u64::MAX).max(1);
        Flags { strategy, intensity: flags.intensity, period_ms }
    }
}

/// Starts the tree `root` as a top supervisor (its parent is the node:
/// [`Node::exit`] stops it) and waits until every child has started.
///
/// # Errors
/// An argument that has no MessagePack form, a child that fails to start
/// (named, with its reason), a name already taken.
pub fn start(node: &Node, code: &Arc<CodeServer>, root: &SupervisorDef) -> Result<Pid, String> {
    let spec = supervisor_spec(code, root)?;
    supervisor::start(node, spec).map_err(|e| format!("starting the supervisor {}: {e}", root.id))
}

/// The runtime spec of a supervisor and its subtree, registered under its
/// id.
///
/// # Errors
/// An argument of a process in it that has no MessagePack form, named.
pub fn supervisor_spec(code: &Arc<CodeServer>, def: &SupervisorDef) -> Result<SupervisorSpec, String> {
    let simple = def.is_simple();
    let children = def
        .children
        .iter()
        .map(|child| match child {
            ChildDef::Process(p) => process_spec(code, p, simple),
            ChildDef::Supervisor(s) => nested_spec(code, s),
        })
        .collect::<Result<Vec<_>, String>>()?;
    let flags = def.flags.to_runtime();
    Ok(SupervisorSpec {
        strategy: flags.strategy,
        intensity: flags.intensity,
        period: flags.period,
        children,
        name: Some(def.id.as_str().into()),
    })
}

/// The spec a supervisor keeps for `child`; `in_simple`: the child is the
/// template of a simple_one_for_one supervisor.
///
/// # Errors
/// An argument that has no MessagePack form, named.
pub fn child_spec(code: &Arc<CodeServer>, child: &ChildDef, in_simple: bool) -> Result<ChildSpec, String> {
    match child {
        ChildDef::Process(p) => process_spec(code, p, in_simple),
        ChildDef::Supervisor(s) => nested_spec(code, s),
    }
}

fn nested_spec(code: &Arc<CodeServer>, def: &SupervisorDef) -> Result<ChildSpec, String> {
    let spec = supervisor_spec(code, def)?;
    Ok(ChildSpec {
        restart: def.restart,
        shutdown: def.shutdown.to_runtime(),
        ..ChildSpec::supervisor(def.id.as_str(), spec)
    })
}

fn process_spec(code: &Arc<CodeServer>, def: &ProcessDef, template: bool) -> Result<ChildSpec, String> {
    let init = json_to_payload(&def.args).map_err(|e| format!("process {}: args: {e}", def.id))?.0;
    let (code, module, args) = (Arc::clone(code), def.module.clone(), def.args.clone());
    let spec = ChildSpec::with_args(def.id.as_str(), move |given: &Message| {
        let init = if given.is::<()>() {
            init.clone()
        } else {
            let given = match (given.downcast_ref::<Payload>(), given.downcast_ref::<serde_json::Value>()) {
                (Some(payload), _) => payload_to_json(payload),
                (None, Some(json)) => Ok(json.clone()),
                (None, None) => Err("the arguments are neither MessagePack nor JSON".to_string()),
            };
            // A panic here is a failed start, with this text as its reason.
            let given = given.unwrap_or_else(|e| panic!("starting a child of module {module}: {e}"));
            json_to_payload(&merge(&args, given))
                .unwrap_or_else(|e| panic!("starting a child of module {module}: {e}"))
                .0
        };
        match code.module_process(&module, init) {
            Ok(process) => Box::new(process),
            Err(error) => panic!("starting a child of module {module}: {error}"),
        }
    });
    let spec = ChildSpec { restart: def.restart, shutdown: def.shutdown.to_runtime(), ..spec };
    Ok(if template { spec } else { spec.registered(def.id.as_str()) })
}

/// A dynamic child's init argument: `given` over the template's `args`.
fn merge(template: &serde_json::Value, given: serde_json::Value) -> serde_json::Value {
    match (template, given) {
        (serde_json::Value::Object(base), serde_json::Value::Object(over)) => {
            let mut merged = base.clone();
            merged.extend(over);
            serde_json::Value::Object(merged)
        }
        (template, serde_json::Value::Null) => template.clone(),
        (_, given) => given,
    }
}

#[cfg(test)]
mod tests {
    use super::merge;
    use serde_json::json;

    #[test]
    fn a_dynamic_childs_arguments_go_over_the_templates() {
        let template = json!({"history": 5, "topic": "none"});
        assert_eq!(merge(&template, json!({"topic": "rust"})), json!({"history": 5, "topic": "rust"}));
        assert_eq!(merge(&template, json!(null)), template);
        assert_eq!(merge(&template, json!(7)), json!(7));
        assert_eq!(merge(&json!(null), json!({"a": 1})), json!({"a": 1}));
    }
}
