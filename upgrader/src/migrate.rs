//! Moving processes between versions: one system task per process, run by
//! the process itself between two of its messages (see
//! `relive_runtime::system`), so each is paused only for its own
//! migration and all of them migrate in parallel on every worker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use relive_runtime::system::{TaskError, TaskGroup, TaskGuard};
use relive_runtime::{Actor, MailboxCounts, ModuleCode, ModuleState, Node, Payload, Pid};

use crate::controller::{Phase, PhaseHook};

/// Where a move went.
pub(crate) enum Moved {
    /// Switched; the old state is kept until the upgrade commits, to give
    /// it back untouched if the upgrade is undone before the process has
    /// handled anything on the new code.
    Switched { old_state: Option<ModuleState>, handled_at_switch: u64 },
    /// It already ran the target version.
    AlreadyThere,
}

/// How a move back went.
pub(crate) enum MovedBack {
    /// Its untouched old state is back.
    Restored,
    /// It handled messages on the new code: the new version downgraded its
    /// state and the old one took it.
    Downgraded,
    /// It no longer ran the version being undone.
    Elsewhere,
}

/// One process moved, as the transaction remembers it.
pub(crate) struct MovedProcess {
    pub(crate) pid: Pid,
    pub(crate) old_state: Option<ModuleState>,
    pub(crate) handled_at_switch: u64,
}

/// The processes one `update` moved from `from` to `to`.
pub(crate) struct MovedSet {
    pub(crate) module: String,
    pub(crate) from: Arc<ModuleCode>,
    pub(crate) to: Arc<ModuleCode>,
    pub(crate) processes: Vec<MovedProcess>,
}

/// Timeouts of one process's move, and who is told of its phases.
#[derive(Clone)]
pub(crate) struct Limits {
    pub(crate) reach: Duration,
    pub(crate) code_change: Duration,
    pub(crate) on_phase: Option<PhaseHook>,
}

/// What a batch of moves did.
#[derive(Default)]
pub(crate) struct BatchOutcome {
    pub(crate) moved: Vec<MovedProcess>,
    pub(crate) pauses: Vec<Duration>,
    pub(crate) exited: Vec<Pid>,
    pub(crate) failures: Vec<(Pid, String)>,
    /// For the moved processes: their mailbox before, to account for
    /// messages once the upgrade ends.
    pub(crate) counts_before: Vec<(Pid, MailboxCounts)>,
}

fn migrate_in_place(
    actor: &mut dyn Actor,
    guard: &TaskGuard,
    to: &Arc<ModuleCode>,
    extra: &[u8],
    on_phase: &Option<PhaseHook>,
) -> Result<Moved, String> {
    let process = actor.as_module_process().ok_or("not a module process")?;
    if Arc::ptr_eq(process.code(), to) {
        return Ok(Moved::AlreadyThere);
    }
    PhaseHook::call(on_phase, Phase::Suspended);
    if process.code().name() != to.name() {
        return Err(format!("it runs module {}, not {}", process.code().name(), to.name()));
    }
    let from = process.code().version().clone();
    let state = process
        .migrated_state(to, extra)
        .map_err(|e| format!("moving {} {from} → {} failed: {e}", to.name(), to.version()))?;
    PhaseHook::call(on_phase, Phase::Migrated);
    if !guard.commit() {
        // Too late: the controller gave up on this process; the new state
        // is freed by its version and the process stays as it was.
        return Err("abandoned".into());
    }
    let old_state = process.switch(state);
    Ok(Moved::Switched { old_state, handled_at_switch: process.handled() })
}

/// Moves every process of `pids` to `to`, all at once: each runs its own
/// migration when it reaches it. A process that fails is left on its old
/// code with its old state; the caller decides what that means for the
/// others.
pub(crate) fn move_all(
    node: &Node,
    pids: &[Pid],
    to: &Arc<ModuleCode>,
    extra: &Arc<[u8]>,
    limits: &Limits,
) -> BatchOutcome {
    let mut outcome = BatchOutcome::default();
    let mut group = TaskGroup::new();
    let mut before = Vec::with_capacity(pids.len());
    for &pid in pids {
        let Some(counts) = node.mailbox_counts(pid) else {
            outcome.exited.push(pid);
            continue;
        };
        let (to, extra, on_phase) = (Arc::clone(to), Arc::clone(extra), limits.on_phase.clone());
        match group
            .queue(node, pid, move |actor, guard| migrate_in_place(actor, guard, &to, &extra, &on_phase))
        {
            Ok(()) => before.push(counts),
            Err(_) => outcome.exited.push(pid),
        }
    }
    for ((pid, result), before) in group.collect(limits.reach, limits.code_change).into_iter().zip(before) {
        match result {
            Ok(done) => match done.value {
                Ok(Moved::Switched { old_state, handled_at_switch }) => {
                    outcome.pauses.push(done.ran_for);
                    outcome.counts_before.push((pid, before));
                    outcome.moved.push(MovedProcess { pid, old_state, handled_at_switch });
                }
                Ok(Moved::AlreadyThere) => {}
                Err(error) => outcome.failures.push((pid, error)),
            },
            Err(TaskError::Exited) => outcome.exited.push(pid),
            Err(TaskError::NotStarted(limit)) => outcome.failures.push((
                pid,
                format!(
                    "it did not reach its migration within {limit:?} (busy in a handler, suspended, or a long queue)"
                ),
            )),
            Err(TaskError::Overran(limit)) => {
                outcome.failures.push((pid, format!("code_change did not return within {limit:?}")))
            }
            Err(TaskError::Panicked(text)) => outcome.failures.push((pid, format!("migration panicked: {text}"))),
        }
    }
    outcome
}

/// Moves processes of a group suspended together: all are suspended first,
/// migrated one by one while suspended, then resumed. Each is paused for
/// the whole group. On the first failure nothing is switched.
pub(crate) fn move_group(
    node: &Node,
    pids: &[Pid],
    to: &Arc<ModuleCode>,
    extra: &[u8],
    limits: &Limits,
) -> BatchOutcome {
    let mut outcome = BatchOutcome::default();
    let started = Instant::now();
    let mut suspended = Vec::with_capacity(pids.len());
    let mut prepared: Vec<(Pid, ModuleState)> = Vec::new();
    let resume_all = |suspended: &[(Pid, MailboxCounts)]| {
        for (pid, _) in suspended {
            let _ = node.resume(*pid);
        }
    };
    for &pid in pids {
        let before = node.mailbox_counts(pid);
        match (before, node.suspend(pid, limits.reach)) {
            (Some(before), Ok(())) => suspended.push((pid, before)),
            (_, Err(relive_runtime::SuspendError::NoProc(_))) | (None, _) => outcome.exited.push(pid),
            (_, Err(error)) => {
                outcome.failures.push((pid, format!("suspend failed: {error}")));
                resume_all(&suspended);
                return outcome;
            }
        }
    }
    for (pid, _) in &suspended {
        let built = node.with_suspended(*pid, |actor| {
            let process = actor.as_module_process().ok_or_else(|| "not a module process".to_string())?;
            if Arc::ptr_eq(process.code(), to) {
                return Ok(None);
            }
            PhaseHook::call(&limits.on_phase, Phase::Suspended);
            let state = process.migrated_state(to, extra).map_err(|e| e.to_string())?;
            PhaseHook::call(&limits.on_phase, Phase::Migrated);
            Ok(Some(state))
        });
        match built {
            Ok(Ok(Some(state))) => prepared.push((*pid, state)),
            Ok(Ok(None)) => {}
            Ok(Err(error)) => outcome.failures.push((*pid, error)),
            Err(error) => outcome.failures.push((*pid, error.to_string())),
        }
        if !outcome.failures.is_empty() {
            drop(prepared);
            resume_all(&suspended);
            return outcome;
        }
    }
    for (pid, state) in prepared {
        let switched = node.with_suspended(pid, move |actor| {
            let process = actor.as_module_process().expect("checked above");
            let old_state = process.switch(state);
            (old_state, process.handled())
        });
        if let Ok((old_state, handled_at_switch)) = switched {
            let before = suspended.iter().find(|(p, _)| *p == pid).map(|(_, c)| *c).unwrap_or_default();
            outcome.counts_before.push((pid, before));
            outcome.moved.push(MovedProcess { pid, old_state, handled_at_switch });
        }
    }
    resume_all(&suspended);
    let paused = started.elapsed();
    outcome.pauses = vec![paused; outcome.moved.len()];
    outcome
}

fn move_back_in_place(
    actor: &mut dyn Actor,
    guard: &TaskGuard,
    from: &Arc<ModuleCode>,
    to: &Arc<ModuleCode>,
    old_state: Option<ModuleState>,
    handled_at_switch: Option<u64>,
) -> Result<MovedBack, String> {
    let process = actor.as_module_process().ok_or("not a module process")?;
    if !Arc::ptr_eq(process.code(), to) {
        return Ok(MovedBack::Elsewhere);
    }
    if let (Some(state), Some(handled)) = (old_state, handled_at_switch)
        && process.handled() == handled
    {
        if !guard.commit() {
            return Err("abandoned".into());
        }
        // Nothing ran on the new code: the old state is exactly as it was.
        drop(process.switch(state));
        return Ok(MovedBack::Restored);
    }
    let state = process.migrated_state(from, &[]).map_err(|e| {
        format!("moving {} {} back to {} failed: {e}", to.name(), to.version(), from.version())
    })?;
    if !guard.commit() {
        return Err("abandoned".into());
    }
    drop(process.switch(state));
    Ok(MovedBack::Downgraded)
}

/// Checks, before an explicit rollback moves anyone, that every process
/// of `set` that would need `downgrade` (it handled messages on the new
/// code, or started on it) gets a state the old version accepts: each
/// builds that state off to the side, in its own turn, and drops it. The
/// first refusal, as (pid, why); nothing is switched either way.
pub(crate) fn check_move_back(node: &Node, set: &MovedSet, limits: &Limits) -> Result<(), (Pid, String)> {
    let handled_at_switch: std::collections::HashMap<Pid, u64> = set
        .processes
        .iter()
        .filter(|p| p.old_state.is_some())
        .map(|p| (p.pid, p.handled_at_switch))
        .collect();
    let mut group = TaskGroup::new();
    for pid in set.to.processes() {
        let (from, to) = (Arc::clone(&set.from), Arc::clone(&set.to));
        let restorable = handled_at_switch.get(&pid).copied();
        // A process that is gone has nothing to move back.
        let _ = group.queue(node, pid, move |actor, _guard| {
            let process = actor.as_module_process().ok_or("not a module process")?;
            if !Arc::ptr_eq(process.code(), &to) || restorable == Some(process.handled()) {
                return Ok(());
            }
            process.migrated_state(&from, &[]).map(drop).map_err(|e| {
                format!("moving {} {} back to {} would fail: {e}", to.name(), to.version(), from.version())
            })
        });
    }
    for (pid, result) in group.collect(limits.reach, limits.code_change) {
        match result {
            Ok(done) => done.value.map_err(|error: String| (pid, error))?,
            Err(TaskError::Exited) => {}
            Err(error) => return Err((pid, error.to_string())),
        }
    }
    Ok(())
}

/// What moving processes back did.
#[derive(Default)]
pub(crate) struct BackOutcome {
    pub(crate) restored: usize,
    pub(crate) downgraded: usize,
    pub(crate) failed: Vec<(Pid, String)>,
    pub(crate) pauses: Vec<Duration>,
}

/// Moves every process that runs `set.to` back to `set.from`: those the
/// set moved (with their kept old state) and any started on `set.to` since.
pub(crate) fn move_back(node: &Node, set: MovedSet, limits: &Limits) -> BackOutcome {
    let MovedSet { from, to, processes, .. } = set;
    let mut known: std::collections::HashSet<Pid> = processes.iter().map(|p| p.pid).collect();
    let mut work: Vec<(Pid, Option<ModuleState>, Option<u64>)> =
        processes.into_iter().map(|p| (p.pid, p.old_state, Some(p.handled_at_switch))).collect();
    for pid in to.processes() {
        if known.insert(pid) {
            work.push((pid, None, None));
        }
    }
    let mut outcome = BackOutcome::default();
    let mut group = TaskGroup::new();
    for (pid, old_state, handled) in work {
        let (from, to) = (Arc::clone(&from), Arc::clone(&to));
        // A process that is gone has nothing to move back.
        let _ = group.queue(node, pid, move |actor, guard| {
            move_back_in_place(actor, guard, &from, &to, old_state, handled)
        });
    }
    for (pid, result) in group.collect(limits.reach, limits.code_change) {
        match result {
            Ok(done) => match done.value {
                Ok(MovedBack::Restored) => {
                    outcome.restored += 1;
                    outcome.pauses.push(done.ran_for);
                }
                Ok(MovedBack::Downgraded) => {
                    outcome.downgraded += 1;
                    outcome.pauses.push(done.ran_for);
                }
                Ok(MovedBack::Elsewhere) => {}
                Err(error) => outcome.failed.push((pid, error)),
            },
            Err(TaskError::Exited) => {}
            Err(error) => outcome.failed.push((pid, error.to_string())),
        }
    }
    outcome
}

/// What telling processes of a new configuration did.
#[derive(Default)]
pub(crate) struct ConfigOutcome {
    /// The processes that took it.
    pub(crate) told: Vec<Pid>,
    /// The ones that refused it or did not get to it: pid, module, why.
    pub(crate) failures: Vec<(Pid, Option<String>, String)>,
}

/// Runs `config_change(old → new)` in every process of `pids` at once,
/// each in its own turn between two of its messages (a system task, as a
/// migration). Processes that are not module processes, or that exited,
/// are skipped. Set the node's configuration to `new` first: the callbacks
/// read it.
pub(crate) fn config_change_all(
    node: &Node,
    pids: &[Pid],
    old: &Arc<Payload>,
    new: &Arc<Payload>,
    limits: &Limits,
) -> ConfigOutcome {
    let mut outcome = ConfigOutcome::default();
    let mut group = TaskGroup::new();
    for &pid in pids {
        let (node, old, new) = (node.clone(), Arc::clone(old), Arc::clone(new));
        // A process that is gone has nothing to be told.
        let _ = group.queue(&node.clone(), pid, move |actor, guard| {
            let Some(process) = actor.as_module_process() else { return Ok(None) };
            let module = process.code().name().to_string();
            if !guard.commit() {
                return Err((Some(module), "abandoned".to_string()));
            }
            match process.config_change(&node, &old, &new) {
                Ok(()) => Ok(Some(())),
                Err(error) => {
                    Err((Some(module), format!("config_change refused the new configuration: {error}")))
                }
            }
        });
    }
    for (pid, result) in group.collect(limits.reach, limits.code_change) {
        match result {
            Ok(done) => match done.value {
                Ok(Some(())) => outcome.told.push(pid),
                Ok(None) => {}
                Err((module, error)) => outcome.failures.push((pid, module, error)),
            },
            Err(TaskError::Exited) => {}
            Err(TaskError::NotStarted(limit)) => outcome.failures.push((
                pid,
                None,
                format!("it did not reach its config_change within {limit:?} (busy in a handler, suspended, or a long queue)"),
            )),
            Err(TaskError::Overran(limit)) => {
                outcome.failures.push((pid, None, format!("config_change did not return within {limit:?}")))
            }
            Err(TaskError::Panicked(text)) => {
                outcome.failures.push((pid, None, format!("config_change panicked: {text}")))
            }
        }
    }
    outcome
}

/// What asking processes for their health found.
#[derive(Default)]
pub(crate) struct HealthOutcome {
    /// Processes whose `health` callback was asked.
    pub(crate) asked: usize,
    /// The unhealthy ones (or those that could not be asked), and why.
    pub(crate) failures: Vec<(Pid, String)>,
}

/// In each process of `pids`, between two of its messages (a system task):
/// adds its pending counts to its version's stats, then, if `ask`, runs its
/// module's `health` callback. Processes that exited are skipped; one that
/// does not reach the task in time is unhealthy.
pub(crate) fn check_health(node: &Node, pids: &[Pid], ask: bool, limits: &Limits) -> HealthOutcome {
    let mut outcome = HealthOutcome::default();
    let mut group = TaskGroup::new();
    for &pid in pids {
        let task_node = node.clone();
        // A process that is gone has no health to tell (its crash, if it
        // was one, is counted as such).
        let _ = group.queue(node, pid, move |actor, guard| {
            let Some(process) = actor.as_module_process() else { return Ok(false) };
            process.flush_stats();
            if !ask {
                return Ok(false);
            }
            if !guard.commit() {
                return Err("abandoned".to_string());
            }
            let (module, version) = (process.code().name().to_string(), process.code().version().clone());
            process.health(&task_node).map(|()| true).map_err(|e| format!("{module} {version}: {e}"))
        });
    }
    for (pid, result) in group.collect(limits.reach, limits.code_change) {
        match result {
            Ok(done) => match done.value {
                Ok(true) => outcome.asked += 1,
                Ok(false) => {}
                Err(error) => {
                    outcome.asked += 1;
                    outcome.failures.push((pid, error));
                }
            },
            Err(TaskError::Exited) => {}
            Err(TaskError::NotStarted(limit)) => outcome.failures.push((
                pid,
                format!(
                    "it did not reach its health check within {limit:?} (busy in a handler, or a long queue)"
                ),
            )),
            Err(TaskError::Overran(limit)) => {
                outcome.failures.push((pid, format!("health did not return within {limit:?}")))
            }
            Err(TaskError::Panicked(text)) => {
                outcome.failures.push((pid, format!("health panicked: {text}")))
            }
        }
    }
    outcome
}
