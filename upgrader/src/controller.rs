//! The upgrade controller: applies a plan to a running node as one
//! transaction, watches the result, and undoes it when asked or when the
//! new code misbehaves.
//!
//! Every instruction that changes something pushes what undoes it: a load
//! its unload, a move its way back, a started child (or subtree) its stop,
//! a stopped child its start (from the spec kept before the stop, should
//! its supervisor forget it), a `change_child` the spec it replaced, a
//! `change_supervisor` the flags it replaced, a `change_config` the
//! configuration it replaced (set again, and every module process that
//! took the new one runs `config_change` back to the old one). A failure,
//! a failed canary or health window, or an explicit rollback runs the undo
//! in reverse; children stopped by the plan start again last, once their
//! old code is current again.
//!
//! A dry run checks only the migrations (`code_change` on copies of the
//! states): it changes no supervisor and runs no `config_change`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use relive_runtime::supervisor::{self, ChildSpec};
use relive_runtime::{
    CodeServer, MailboxCounts, ModuleCode, Node, Payload, Pid, SupervisorError, VersionStatsSnapshot,
};

use crate::migrate::{self, BatchOutcome, Limits, MovedSet};
use crate::plan::{
    ChildDef, Instruction, Plan, ProcessDef, Processes, PurgeMode, ReleaseStep, SupervisorDef,
};
use crate::report::{
    CanaryReport, DryRunFailure, DryRunReport, FailedSignal, Failure, HealthReport, Outcome, PauseHistogram,
    PauseStats, Report, RollbackReport, Signal, StepReport, UpgradeError, WindowSignals,
};
use crate::tree;

/// The least time a rollback gives each process to reach its move back,
/// whatever [`Options::suspend_timeout`] says.
const ROLLBACK_MIN_REACH: Duration = Duration::from_secs(5);

/// What `versions` counted since their readings `before` (one each), as
/// one window.
fn window_of(versions: &[Arc<ModuleCode>], before: &[VersionStatsSnapshot]) -> VersionStatsSnapshot {
    let mut seen = VersionStatsSnapshot::default();
    for (version, before) in versions.iter().zip(before) {
        seen.add(&version.stats().since(before));
    }
    seen
}

/// How an upgrade runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long a process may take to reach its migration (it finishes the
    /// message in hand first). Past it the upgrade fails, naming it. Its
    /// rollback waits at least 5 s for each process.
    pub suspend_timeout: Duration,
    /// How long one process's `code_change` may run.
    pub code_change_timeout: Duration,
    /// After the switch, how long to watch the new code before committing
    /// (zero: commit at once).
    pub health_window: Duration,
    /// Crashes of processes on the new versions the window tolerates;
    /// one more rolls the upgrade back.
    pub max_crashes: u64,
    /// Move this share of each updated module's processes first, watch
    /// them, then move the rest or roll back.
    pub canary: Option<Canary>,
    /// What the canary and health windows judge besides crashes.
    pub health: HealthChecks,
    /// Timeout of each supervisor request (start, stop, restart a child).
    pub child_timeout: Duration,
    /// Told of each [`Phase`] as the upgrade reaches it (progress, and the
    /// node's crash points for kill -9 tests).
    pub on_phase: Option<PhaseHook>,
}

/// A point of an upgrade that [`Options::on_phase`] is told about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Every library is opened; nothing has changed yet.
    Prepared,
    /// A process is paused at its migration, before its `code_change`
    /// (told once per process).
    Suspended,
    /// A process's `code_change` returned its new state, before the switch
    /// (told once per process).
    Migrated,
    /// Every instruction ran: the processes run the new code; the health
    /// window, if any, comes next.
    Switched,
    /// The upgrade is committed.
    Committed,
}

impl Phase {
    /// The phase's name: `prepared`, `suspended`, `migrated`, `switched`,
    /// `committed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Prepared => "prepared",
            Phase::Suspended => "suspended",
            Phase::Migrated => "migrated",
            Phase::Switched => "switched",
            Phase::Committed => "committed",
        }
    }
}

/// A function told of each [`Phase`]; it runs on the thread that reached
/// the phase (for `Suspended` and `Migrated`, inside the process's
/// migration), so it must be quick.
#[derive(Clone)]
pub struct PhaseHook(Arc<dyn Fn(Phase) + Send + Sync>);

impl PhaseHook {
    pub fn new(hook: impl Fn(Phase) + Send + Sync + 'static) -> PhaseHook {
        PhaseHook(Arc::new(hook))
    }

    pub(crate) fn call(hook: &Option<PhaseHook>, phase: Phase) {
        if let Some(hook) = hook {
            (hook.0)(phase);
        }
    }
}

impl std::fmt::Debug for PhaseHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PhaseHook")
    }
}

impl Default for Options {
    fn default() -> Options {
        Options {
            suspend_timeout: Duration::from_secs(5),
            code_change_timeout: Duration::from_secs(5),
            health_window: Duration::ZERO,
            max_crashes: 0,
            canary: None,
            health: HealthChecks::default(),
            child_timeout: Duration::from_secs(10),
            on_phase: None,
        }
    }
}

/// A canary: which share goes first and how long it is watched (by the
/// signals of [`Options::health`] and [`Options::max_crashes`]).
#[derive(Clone, Debug)]
pub struct Canary {
    /// Share of the processes moved first, in (0, 1).
    pub share: f64,
    /// How long they are watched.
    pub window: Duration,
}

impl Canary {
    /// `share` of the processes first, watched for `window`.
    pub fn new(share: f64, window: Duration) -> Canary {
        Canary { share, window }
    }
}

/// The signals a canary or health window judges besides crashes. Every
/// window also fails on a cast or message the new code could not decode
/// (it is lost).
#[derive(Clone, Debug, Default)]
pub struct HealthChecks {
    /// Whose `health` callback is asked at the end of each window.
    pub probe: HealthProbe,
    /// The most error replies the new code may answer, as a share of its
    /// replies in the window, in [0, 1] (`None`: not judged).
    pub max_error_rate: Option<f64>,
    /// The most the new code's mean handler time may be, as a multiple of
    /// the old code's (`None`: not judged).
    pub max_latency_ratio: Option<f64>,
}

/// Whose `health` callback a window asks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum HealthProbe {
    /// Every process on the new code (those a canary moved, during a
    /// canary).
    #[default]
    NewCode,
    /// The process registered under this name, whatever code it runs (a
    /// process that checks the service end to end).
    Process(String),
    /// Nobody.
    Off,
}

impl Options {
    /// Checks every option's range, and that a health process exists.
    fn check(&self, node: &Node) -> Result<(), UpgradeError> {
        let bad = |text: String| Err(UpgradeError::BadOptions(text));
        if let Some(canary) = &self.canary {
            if !(canary.share > 0.0 && canary.share < 1.0) {
                return bad(format!(
                    "the canary's share is {}: it must be more than 0 and less than 1 (all at once is no canary)",
                    canary.share
                ));
            }
            if canary.window.is_zero() {
                return bad("the canary window is 0: give it a length to watch the canaries".into());
            }
        }
        if let Some(rate) = self.health.max_error_rate
            && !(0.0..=1.0).contains(&rate)
        {
            return bad(format!("the maximum error rate is {rate}: it must be within 0 and 1"));
        }
        if let Some(ratio) = self.health.max_latency_ratio
            && !(ratio.is_finite() && ratio > 0.0)
        {
            return bad(format!("the maximum latency ratio is {ratio}: it must be a number above 0"));
        }
        if let HealthProbe::Process(name) = &self.health.probe {
            let Some(pid) = node.whereis(name) else {
                return bad(format!(
                    "no process is registered as {name:?}, the health process: name a running process of the release"
                ));
            };
            // Only a module process has a `health` callback (a supervisor
            // has none). Asked once per upgrade: the scan is cheap.
            let runs_module = node.code_server().is_some_and(|code| {
                code.which_modules().iter().any(|module| {
                    [code.current(&module.name), code.old(&module.name)]
                        .into_iter()
                        .flatten()
                        .any(|version| version.processes().contains(&pid))
                })
            });
            if !runs_module {
                return bad(format!(
                    "the health process {name:?} ({pid}) runs no module, so it has no health callback (a supervisor?): name a module process of the release"
                ));
            }
        }
        Ok(())
    }
}

/// What undoes one applied step.
enum Undo {
    /// `previous`: what was current before; put back if a later load
    /// dropped it.
    Loaded {
        module: String,
        code: Arc<ModuleCode>,
        previous: Option<Arc<ModuleCode>>,
    },
    Moved(MovedSet),
    Deleted {
        module: String,
    },
    Started {
        supervisor: String,
        id: String,
    },
    /// `spec`: the child's spec before it stopped, to start it again if
    /// its supervisor forgot it (a temporary child's is forgotten).
    Stopped {
        supervisor: String,
        id: String,
        spec: Option<ChildSpec>,
    },
    /// The spec a `change_child` replaced.
    SpecChanged {
        supervisor: String,
        old: ChildSpec,
    },
    /// The flags a `change_supervisor` replaced.
    FlagsChanged {
        supervisor: String,
        old: supervisor::Flags,
    },
    /// The configuration a `change_config` replaced; `refused`: the
    /// processes that did not take the new one (not told of the old one
    /// again).
    ConfigChanged {
        old: Arc<Payload>,
        new: Arc<Payload>,
        refused: Vec<Pid>,
    },
    Restarted {
        supervisor: String,
        id: String,
    },
}

/// The last committed upgrade, kept for an explicit rollback.
struct Committed {
    plan: String,
    releases: Option<ReleaseStep>,
    undo: Vec<Undo>,
    purged: Vec<String>,
}

/// Applies upgrade plans to one node, one at a time.
pub struct Controller {
    node: Node,
    code: Arc<CodeServer>,
    running: Mutex<Option<String>>,
    last: Mutex<Option<Committed>>,
}

/// Clears the running mark when an upgrade ends however it ends.
struct Running<'a>(&'a Mutex<Option<String>>);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        *self.0.lock() = None;
    }
}

impl Controller {
    /// A controller for `node`.
    ///
    /// # Errors
    /// [`UpgradeError::NoCodeServer`] if the node was started without one.
    pub fn new(node: &Node) -> Result<Controller, UpgradeError> {
        let code = node.code_server().ok_or(UpgradeError::NoCodeServer)?;
        Ok(Controller { node: node.clone(), code, running: Mutex::new(None), last: Mutex::new(None) })
    }

    fn begin(&self, what: &str) -> Result<Running<'_>, UpgradeError> {
        let mut running = self.running.lock();
        if let Some(other) = running.as_ref() {
            return Err(UpgradeError::Busy { running: other.clone() });
        }
        *running = Some(what.to_string());
        Ok(Running(&self.running))
    }

    /// The upgrade running now, if any.
    pub fn running(&self) -> Option<String> {
        self.running.lock().clone()
    }

    /// What [`Controller::rollback`] would undo: the releases of the last
    /// committed plan (`None` when nothing can be rolled back, or the plan
    /// was not made from two releases).
    pub fn undo_target(&self) -> Option<ReleaseStep> {
        self.last.lock().as_ref().and_then(|last| last.releases.clone())
    }

    /// Applies `plan`: loads all code, runs each instruction (moving
    /// processes one by one, each paused only for its own migration), runs
    /// the canary and health windows, then commits. On any failure
    /// everything done is undone.
    ///
    /// # Errors
    /// [`UpgradeError::Busy`] while another upgrade runs;
    /// [`UpgradeError::Plan`] for a malformed plan (nothing done);
    /// [`UpgradeError::Aborted`] naming the instruction, process and module
    /// that failed; [`UpgradeError::RolledBack`] when the canary or the
    /// health window rolled it back. Both carry the report.
    pub fn apply(&self, plan: &Plan, options: &Options) -> Result<Report, UpgradeError> {
        plan.validate()?;
        options.check(&self.node)?;
        let _running = self.begin(&plan.name)?;
        tracing::info!(plan = %plan.name, instructions = plan.instructions.len(), "upgrade starts");
        // Every library is opened (read, checked, copied into the code
        // directory, mapped) before anything changes: the node does not
        // see them until the transaction installs them.
        let preparing = Instant::now();
        let mut staged = Vec::new();
        for (i, instruction) in plan.instructions.iter().enumerate() {
            if let Instruction::LoadModule { module, path } | Instruction::AddModule { module, path } =
                instruction
            {
                match self.code.open(path) {
                    Ok(code) => staged.push((module.clone(), code)),
                    Err(error) => {
                        let failure = Failure {
                            instruction: i + 1,
                            step: instruction.to_string(),
                            pid: None,
                            name: None,
                            module: Some(module.clone()),
                            error: error.to_string(),
                        };
                        let tx = Transaction::new(self, options);
                        let report =
                            tx.report(&plan.name, Outcome::Aborted { failure: failure.clone() }, None);
                        return Err(UpgradeError::Aborted {
                            failure: Box::new(failure),
                            report: Box::new(report),
                        });
                    }
                }
            }
        }
        let mut tx = Transaction::new(self, options);
        tx.staged = staged;
        tx.prepare_time = preparing.elapsed();
        PhaseHook::call(&options.on_phase, Phase::Prepared);
        // Loads first: a library that does not load aborts the upgrade
        // before any process is touched.
        let (loads, rest): (Vec<_>, Vec<_>) =
            plan.instructions.iter().enumerate().partition(|(_, i)| {
                matches!(i, Instruction::LoadModule { .. } | Instruction::AddModule { .. })
            });
        for (i, instruction) in loads.into_iter().chain(rest) {
            let started = Instant::now();
            if let Err(mut failure) = tx.run(i + 1, instruction) {
                failure.name = failure.pid.and_then(|pid| self.node.name_of(pid)).map(|n| n.to_string());
                tracing::error!(plan = %plan.name, %failure, "upgrade failed; undoing it");
                tx.upgrade_time = tx.started.elapsed().saturating_sub(tx.canary_time);
                tx.account();
                let undo = std::mem::take(&mut tx.undo);
                let rollback = tx.undo_all(undo);
                let report =
                    tx.report(&plan.name, Outcome::Aborted { failure: failure.clone() }, Some(rollback));
                return Err(UpgradeError::Aborted { failure: Box::new(failure), report: Box::new(report) });
            }
            if matches!(instruction, Instruction::Purge { .. }) {
                // Only queued here; its step is reported when it runs, at
                // commit.
                continue;
            }
            tx.steps.push(StepReport {
                instruction: i + 1,
                step: instruction.to_string(),
                took_us: started.elapsed().as_secs_f64() * 1e6,
            });
        }
        tx.steps.sort_by_key(|s| s.instruction);
        tx.upgrade_time = tx.started.elapsed().saturating_sub(tx.canary_time);
        tx.account();
        PhaseHook::call(&options.on_phase, Phase::Switched);
        if !options.health_window.is_zero() {
            let health = tx.watch(options.health_window);
            let passed = health.passed;
            let failures = health.signals.failures_text();
            tx.health = Some(health);
            if !passed {
                let reason = format!("the {:?} health window failed on {failures}", options.health_window);
                tracing::error!(plan = %plan.name, %reason, "rolling back");
                let undo = std::mem::take(&mut tx.undo);
                let rollback = tx.undo_all(undo);
                let report =
                    tx.report(&plan.name, Outcome::RolledBack { reason: reason.clone() }, Some(rollback));
                return Err(UpgradeError::RolledBack { reason, report: Box::new(report) });
            }
        }
        let purged = tx.commit();
        PhaseHook::call(&options.on_phase, Phase::Committed);
        let report = tx.report(&plan.name, Outcome::Committed, None);
        let undo = std::mem::take(&mut tx.undo);
        *self.last.lock() =
            Some(Committed { plan: plan.name.clone(), releases: plan.releases.clone(), undo, purged });
        tracing::info!(plan = %plan.name, moved = report.moved, upgrade_ms = report.upgrade_ms, "upgrade committed");
        Ok(report)
    }

    /// Undoes the last committed upgrade: processes move back through
    /// `downgrade`, new code is unloaded, started children stop and stopped
    /// ones start again.
    ///
    /// # Errors
    /// [`UpgradeError::NothingToRollBack`]; [`UpgradeError::Busy`];
    /// [`UpgradeError::Aborted`] if the upgrade purged old code (it cannot
    /// be undone: deploy the old release instead).
    pub fn rollback(&self, options: &Options) -> Result<Report, UpgradeError> {
        let _running = self.begin("rollback")?;
        let last = self.last.lock().take().ok_or(UpgradeError::NothingToRollBack)?;
        let mut tx = Transaction::new(self, options);
        if !last.purged.is_empty() {
            let failure = Failure {
                instruction: 0,
                step: "rollback".into(),
                pid: None,
                name: None,
                module: Some(last.purged.join(", ")),
                error: format!(
                    "upgrade {} purged the old code of {}; it cannot be rolled back live (deploy the old release)",
                    last.plan,
                    last.purged.join(", ")
                ),
            };
            *self.last.lock() = Some(last);
            let report = tx.report("rollback", Outcome::Aborted { failure: failure.clone() }, None);
            return Err(UpgradeError::Aborted { failure: Box::new(failure), report: Box::new(report) });
        }
        // A later load (by an upgrade that then failed) may have dropped a
        // version this one moved processes from (a third version drops an
        // old one nobody runs): moving them back would put them on code the
        // code server no longer holds.
        let held = |module: &str, code: &Arc<ModuleCode>| {
            [self.code.current(module), self.code.old(module)]
                .into_iter()
                .flatten()
                .any(|c| Arc::ptr_eq(&c, code))
        };
        let mut gone: Vec<String> = last
            .undo
            .iter()
            .filter_map(|undo| match undo {
                Undo::Moved(set)
                    if !held(&set.module, &set.from)
                        && !last.undo.iter().any(|u| matches!(u, Undo::Loaded { module, previous: Some(p), .. } if *module == set.module && Arc::ptr_eq(p, &set.from))) =>
                {
                    Some(format!("{} {}", set.module, set.from.version()))
                }
                _ => None,
            })
            .collect();
        gone.dedup();
        if !gone.is_empty() {
            let failure = Failure {
                instruction: 0,
                step: "rollback".into(),
                pid: None,
                name: None,
                module: Some(gone.join(", ")),
                error: format!(
                    "{} is no longer loaded (a later load dropped it); upgrade {} cannot be rolled back live (deploy the old release)",
                    gone.join(", "),
                    last.plan
                ),
            };
            *self.last.lock() = Some(last);
            let report = tx.report("rollback", Outcome::Aborted { failure: failure.clone() }, None);
            return Err(UpgradeError::Aborted { failure: Box::new(failure), report: Box::new(report) });
        }
        // A downgrade that would fail refuses the rollback before anything
        // moves: half a rollback would leave processes on both versions.
        let limits = tx.limits();
        for undo in &last.undo {
            let Undo::Moved(set) = undo else { continue };
            if let Err((pid, error)) = migrate::check_move_back(&self.node, set, &limits) {
                let failure = Failure {
                    instruction: 0,
                    step: "rollback".into(),
                    pid: Some(pid),
                    name: self.node.name_of(pid).map(|n| n.to_string()),
                    module: Some(set.module.clone()),
                    error: format!("{error}; nothing was moved back"),
                };
                *self.last.lock() = Some(last);
                let report = tx.report("rollback", Outcome::Aborted { failure: failure.clone() }, None);
                return Err(UpgradeError::Aborted { failure: Box::new(failure), report: Box::new(report) });
            }
        }
        let rollback = tx.undo_all(last.undo);
        tx.upgrade_time = tx.started.elapsed();
        // What this rollback moved: its processes and their pauses.
        tx.moved = rollback.restored + rollback.downgraded;
        tx.pauses = rollback.pauses.clone();
        let reason = format!("explicit rollback of {}", last.plan);
        Ok(tx.report(&last.plan, Outcome::RolledBack { reason }, Some(rollback)))
    }

    /// Runs every migration the plan would run on copies of the live
    /// states, off to the side: each process is paused only to copy its
    /// state; the new code is opened but not installed; nothing changes.
    ///
    /// # Errors
    /// [`UpgradeError::Plan`], [`UpgradeError::Busy`].
    pub fn dry_run(&self, plan: &Plan, options: &Options) -> Result<DryRunReport, UpgradeError> {
        plan.validate()?;
        let _running = self.begin(&plan.name)?;
        let mut report = DryRunReport { plan: plan.name.clone(), ..DryRunReport::default() };
        let mut opened: Vec<(String, Arc<ModuleCode>)> = Vec::new();
        for instruction in &plan.instructions {
            if let Instruction::LoadModule { module, path } | Instruction::AddModule { module, path } =
                instruction
            {
                match self.code.open(path) {
                    Ok(code) if code.name() != module => report.load_errors.push(format!(
                        "{}: the library is module {}, the plan says {module}",
                        path.display(),
                        code.name()
                    )),
                    Ok(code) => opened.push((module.clone(), code)),
                    Err(error) => report.load_errors.push(error.to_string()),
                }
            }
        }
        for instruction in &plan.instructions {
            let Instruction::Update { module, processes, extra, .. } = instruction else { continue };
            let to = opened
                .iter()
                .find(|(m, _)| m == module)
                .map(|(_, c)| c.clone())
                .or_else(|| self.code.current(module));
            let Some(to) = to else { continue };
            let extra = match encode_extra(extra) {
                Ok(extra) => extra,
                Err(error) => {
                    report.load_errors.push(format!("update {module}: {error}"));
                    continue;
                }
            };
            let candidates: Vec<Pid> = match processes {
                Processes::All => [self.code.current(module), self.code.old(module)]
                    .into_iter()
                    .flatten()
                    .filter(|code| !Arc::ptr_eq(code, &to))
                    .flat_map(|code| code.processes())
                    .collect(),
                Processes::Named(names) => names.iter().filter_map(|n| self.node.whereis(n)).collect(),
            };
            let copies = self.copy_states(&candidates, &to, options, module, &mut report);
            check_code_changes(&to, copies, &extra, options.code_change_timeout, module, &mut report);
        }
        Ok(report)
    }

    /// Copies each process's state as `to` would read it.
    fn copy_states(
        &self,
        pids: &[Pid],
        to: &Arc<ModuleCode>,
        options: &Options,
        module: &str,
        report: &mut DryRunReport,
    ) -> Vec<(Pid, semver::Version, Vec<u8>)> {
        let target = to.version().clone();
        let mut group = relive_runtime::system::TaskGroup::new();
        for &pid in pids {
            let target = target.clone();
            // A process that is gone has no state to copy.
            let _ = group.queue(&self.node, pid, move |actor, _guard| {
                let process = actor.as_module_process().ok_or("not a module process")?;
                let from = process.code().version().clone();
                if from == target {
                    return Ok(None);
                }
                process.state_for(&target).map(|bytes| Some((from, bytes))).map_err(|e| e.to_string().into())
            });
        }
        let mut copies = Vec::new();
        for (pid, result) in group.collect(options.suspend_timeout, options.code_change_timeout) {
            match result {
                Ok(done) => match done.value {
                    Ok(Some((from, bytes))) => copies.push((pid, from, bytes)),
                    Ok(None) => {}
                    Err::<_, Box<str>>(error) => report.failures.push(DryRunFailure {
                        pid,
                        module: module.into(),
                        error: error.into(),
                    }),
                },
                Err(relive_runtime::system::TaskError::Exited) => {}
                Err(error) => report.failures.push(DryRunFailure {
                    pid,
                    module: module.into(),
                    error: format!("copying its state: {error}"),
                }),
            }
        }
        copies
    }
}

/// Runs `to`'s code_change on each copy in a thread of its own, so a
/// code_change that never returns is reported, not waited for forever.
fn check_code_changes(
    to: &Arc<ModuleCode>,
    copies: Vec<(Pid, semver::Version, Vec<u8>)>,
    extra: &Arc<[u8]>,
    timeout: Duration,
    module: &str,
    report: &mut DryRunReport,
) {
    let pids: Vec<Pid> = copies.iter().map(|(pid, ..)| *pid).collect();
    let (results, received) = mpsc::channel();
    let (to, extra) = (Arc::clone(to), Arc::clone(extra));
    std::thread::Builder::new()
        .name("relive-dry-run".into())
        .spawn(move || {
            for (pid, from, bytes) in copies {
                let outcome = to.code_change(&from, &bytes, &extra).map(drop).map_err(|e| {
                    format!("code_change {} {from} → {} would fail: {e}", to.name(), to.version())
                });
                if results.send((pid, outcome)).is_err() {
                    return;
                }
            }
        })
        .expect("spawning the dry-run thread");
    for pid in pids {
        report.checked += 1;
        match received.recv_timeout(timeout) {
            Ok((_, Ok(()))) => {}
            Ok((pid, Err(error))) => {
                report.failures.push(DryRunFailure { pid, module: module.into(), error })
            }
            Err(_) => {
                report.failures.push(DryRunFailure {
                    pid,
                    module: module.into(),
                    error: format!("code_change did not return within {timeout:?}"),
                });
                return;
            }
        }
    }
}

/// Error replies as a share of replies, if any were answered.
fn signals_rate(seen: &VersionStatsSnapshot) -> Option<f64> {
    (seen.replies > 0).then(|| seen.error_replies as f64 / seen.replies as f64)
}

fn encode_extra(extra: &serde_json::Value) -> Result<Arc<[u8]>, String> {
    if extra.is_null() {
        return Ok(Arc::from(Vec::new()));
    }
    rmp_serde::to_vec_named(extra).map(Arc::from).map_err(|e| format!("extra does not encode: {e}"))
}

/// One upgrade (or rollback) in progress.
struct Transaction<'a> {
    controller: &'a Controller,
    options: &'a Options,
    /// Libraries opened before the transaction, by module.
    staged: Vec<(String, Arc<ModuleCode>)>,
    /// How long opening them took.
    prepare_time: Duration,
    undo: Vec<Undo>,
    purges: Vec<(usize, String, PurgeMode)>,
    pauses: Vec<Duration>,
    exited: Vec<Pid>,
    counts_before: Vec<(Pid, MailboxCounts)>,
    /// Versions this transaction loaded: their undecodable messages are
    /// lost ones.
    new_versions: Vec<Arc<ModuleCode>>,
    /// Each updated module's new version, and its old version's stats
    /// before any process moved (the latency baseline of a health window).
    baselines: Vec<(Arc<ModuleCode>, VersionStatsSnapshot)>,
    moved: usize,
    received: u64,
    lost: u64,
    steps: Vec<StepReport>,
    canary: Option<CanaryReport>,
    health: Option<HealthReport>,
    started: Instant,
    /// Spent watching canaries: not part of `upgrade_time`.
    canary_time: Duration,
    upgrade_time: Duration,
}

impl<'a> Transaction<'a> {
    fn new(controller: &'a Controller, options: &'a Options) -> Transaction<'a> {
        Transaction {
            controller,
            options,
            staged: Vec::new(),
            prepare_time: Duration::ZERO,
            undo: Vec::new(),
            purges: Vec::new(),
            pauses: Vec::new(),
            exited: Vec::new(),
            counts_before: Vec::new(),
            new_versions: Vec::new(),
            baselines: Vec::new(),
            moved: 0,
            received: 0,
            lost: 0,
            steps: Vec::new(),
            canary: None,
            health: None,
            started: Instant::now(),
            canary_time: Duration::ZERO,
            upgrade_time: Duration::ZERO,
        }
    }

    fn node(&self) -> &Node {
        &self.controller.node
    }

    fn code(&self) -> &CodeServer {
        &self.controller.code
    }

    fn limits(&self) -> Limits {
        Limits {
            reach: self.options.suspend_timeout,
            code_change: self.options.code_change_timeout,
            on_phase: self.options.on_phase.clone(),
        }
    }

    fn run(&mut self, index: usize, instruction: &Instruction) -> Result<(), Failure> {
        let fail = |pid: Option<Pid>, error: String| Failure {
            instruction: index,
            step: instruction.to_string(),
            pid,
            name: None,
            module: instruction.module().map(str::to_string),
            error,
        };
        let timeout = self.options.child_timeout;
        match instruction {
            Instruction::LoadModule { module, path } | Instruction::AddModule { module, path } => {
                let is_add = matches!(instruction, Instruction::AddModule { .. });
                if is_add && self.code().current(module).is_some() {
                    return Err(fail(
                        None,
                        format!("{module} is already loaded: use load_module for a new version"),
                    ));
                }
                if !is_add && self.code().current(module).is_none() {
                    return Err(fail(
                        None,
                        format!("{module} is not loaded: use add_module for a new module"),
                    ));
                }
                // Opened (read, checked, copied, mapped) before the
                // transaction began; here it only becomes current.
                let opened = match self.staged.iter().position(|(m, _)| m == module) {
                    Some(at) => self.staged.swap_remove(at).1,
                    None => self.controller.code.open(path).map_err(|e| fail(None, e.to_string()))?,
                };
                if opened.name() != module {
                    return Err(fail(
                        None,
                        format!("{} is module {}, the plan says {module}", path.display(), opened.name()),
                    ));
                }
                let code = Arc::clone(&opened);
                let previous = self.code().current(module);
                let loaded = self.code().install(opened).map_err(|e| fail(None, e.to_string()))?;
                if loaded.changed {
                    self.new_versions.push(Arc::clone(&code));
                    self.undo.push(Undo::Loaded { module: module.clone(), code, previous });
                }
                Ok(())
            }
            Instruction::Update { module, processes, extra, suspend_together } => {
                self.update(module, processes, extra, *suspend_together).map_err(|(pid, e)| fail(pid, e))
            }
            Instruction::DeleteModule { module } => {
                self.code().delete(module).map_err(|e| fail(None, e.to_string()))?;
                self.undo.push(Undo::Deleted { module: module.clone() });
                Ok(())
            }
            Instruction::StartChild { supervisor: sup, id, module, args, restart, shutdown } => {
                if self.code().current(module).is_none() {
                    return Err(fail(None, format!("{module} is not loaded")));
                }
                let def = ChildDef::Process(ProcessDef {
                    id: id.clone(),
                    module: module.clone(),
                    args: args.clone(),
                    restart: *restart,
                    shutdown: *shutdown,
                });
                self.start_child(sup, &def).map_err(|e| fail(None, e))
            }
            Instruction::StartSupervisor { supervisor: sup, spec } => {
                // Every module of the subtree (templates included) must be
                // there before any of it starts.
                fn modules<'a>(sup: &'a SupervisorDef, out: &mut Vec<&'a ProcessDef>) {
                    for child in &sup.children {
                        match child {
                            ChildDef::Process(p) => out.push(p),
                            ChildDef::Supervisor(s) => modules(s, out),
                        }
                    }
                }
                let mut processes = Vec::new();
                modules(spec, &mut processes);
                if let Some(missing) =
                    processes.into_iter().find(|p| self.code().current(&p.module).is_none())
                {
                    return Err(fail(
                        None,
                        format!("{} (of process {} in the tree) is not loaded", missing.module, missing.id),
                    ));
                }
                self.start_child(sup, &ChildDef::Supervisor(spec.clone())).map_err(|e| fail(None, e))
            }
            Instruction::ChangeChild { supervisor: sup, child } => {
                // The template of a simple_one_for_one supervisor is not
                // registered: ask the supervisor which it is.
                let flags = supervisor::flags(self.node(), sup.as_str(), timeout)
                    .map_err(|e| fail(None, format!("changing child {} under {sup}: {e}", child.id())))?;
                let in_simple = flags.strategy == supervisor::Strategy::SimpleOneForOne;
                let spec =
                    tree::child_spec(&self.controller.code, child, in_simple).map_err(|e| fail(None, e))?;
                let old = supervisor::replace_child_spec(self.node(), sup.as_str(), spec, timeout)
                    .map_err(|e| fail(None, format!("changing child {} under {sup}: {e}", child.id())))?;
                self.undo.push(Undo::SpecChanged { supervisor: sup.clone(), old });
                Ok(())
            }
            Instruction::ChangeConfig { config } => {
                let config = if config.is_null() { serde_json::json!({}) } else { config.clone() };
                let new = relive_runtime::module::json_to_payload(&config).map_err(|e| fail(None, e))?;
                let new = Arc::new(new);
                let old = self.node().set_config((*new).clone());
                let outcome = migrate::config_change_all(
                    self.node(),
                    &self.module_processes(),
                    &old,
                    &new,
                    &self.limits(),
                );
                let first = outcome.failures.first().cloned();
                self.undo.push(Undo::ConfigChanged {
                    old,
                    new,
                    refused: outcome.failures.iter().map(|(pid, ..)| *pid).collect(),
                });
                match first {
                    None => Ok(()),
                    Some((pid, module, error)) => Err(Failure { module, ..fail(Some(pid), error) }),
                }
            }
            Instruction::ChangeSupervisor { supervisor: sup, flags } => {
                let old = supervisor::change_flags(self.node(), sup.as_str(), flags.to_runtime(), timeout)
                    .map_err(|e| fail(None, format!("changing supervisor {sup}: {e}")))?;
                self.undo.push(Undo::FlagsChanged { supervisor: sup.clone(), old });
                Ok(())
            }
            Instruction::StopChild { supervisor: sup, id } => {
                // Kept in case the supervisor forgets it on the stop.
                let spec = supervisor::child_spec(self.node(), sup.as_str(), id, timeout).ok();
                supervisor::terminate_child(self.node(), sup.as_str(), id.as_str(), timeout)
                    .map_err(|e| fail(None, format!("stopping child {id} under {sup}: {e}")))?;
                self.undo.push(Undo::Stopped { supervisor: sup.clone(), id: id.clone(), spec });
                Ok(())
            }
            Instruction::Restart { supervisor: sup, id } => {
                supervisor::terminate_child(self.node(), sup.as_str(), id.as_str(), timeout)
                    .map_err(|e| fail(None, format!("stopping child {id} under {sup}: {e}")))?;
                // Undone by restarting it again once the old code is back.
                self.undo.push(Undo::Restarted { supervisor: sup.clone(), id: id.clone() });
                supervisor::restart_child(self.node(), sup.as_str(), id, timeout)
                    .map_err(|e| fail(None, format!("restarting child {id} under {sup}: {e}")))?;
                Ok(())
            }
            Instruction::Purge { module, mode } => {
                // A purge cannot be undone: it runs at commit.
                self.purges.push((index, module.clone(), *mode));
                Ok(())
            }
        }
    }

    /// Every running module process, on any version.
    fn module_processes(&self) -> Vec<Pid> {
        let mut pids: Vec<Pid> = self
            .code()
            .which_modules()
            .into_iter()
            .flat_map(|m| [self.code().current(&m.name), self.code().old(&m.name)])
            .flatten()
            .flat_map(|code| code.processes())
            .collect();
        pids.sort();
        pids.dedup();
        pids
    }

    /// Starts `child` under the running supervisor `sup` (replacing a
    /// stopped spec of the same id) and records its undo.
    fn start_child(&mut self, sup: &str, child: &ChildDef) -> Result<(), String> {
        let timeout = self.options.child_timeout;
        let id = child.id();
        let spec = tree::child_spec(&self.controller.code, child, false)?;
        let started = match supervisor::start_child(self.node(), sup, spec.clone(), timeout) {
            // The spec an earlier stop_child left (a release that went down
            // and comes back up): it does not run, and this one replaces it.
            Err(SupervisorError::AlreadyPresent(_)) => {
                supervisor::delete_child(self.node(), sup, id, timeout)
                    .and_then(|()| supervisor::start_child(self.node(), sup, spec, timeout))
            }
            other => other,
        };
        started.map_err(|e| format!("starting child {id} under {sup}: {e}"))?;
        self.undo.push(Undo::Started { supervisor: sup.to_string(), id: id.to_string() });
        Ok(())
    }

    fn update(
        &mut self,
        module: &str,
        processes: &Processes,
        extra: &serde_json::Value,
        together: bool,
    ) -> Result<(), (Option<Pid>, String)> {
        let to = self.code().current(module).ok_or_else(|| (None, format!("{module} is not loaded")))?;
        let Some(from) = self.code().old(module) else {
            // No old version: every process already runs the current one.
            return Ok(());
        };
        let extra = encode_extra(extra).map_err(|e| (None, e))?;
        if !self.baselines.iter().any(|(code, _)| Arc::ptr_eq(code, &to)) {
            self.baselines.push((Arc::clone(&to), from.stats()));
        }
        let targets: Vec<Pid> = match processes {
            Processes::All => from.processes(),
            Processes::Named(names) => {
                let mut pids = Vec::with_capacity(names.len());
                for name in names {
                    let pid = self
                        .node()
                        .whereis(name)
                        .ok_or_else(|| (None, format!("no process is registered as {name:?}")))?;
                    pids.push(pid);
                }
                pids
            }
        };
        let limits = self.limits();
        let canary = self.options.canary.clone().filter(|_| !together && targets.len() >= 2);
        let (first, rest) = match &canary {
            Some(canary) => {
                let share = canary.share.clamp(0.0, 1.0);
                let count = ((targets.len() as f64 * share).ceil() as usize).clamp(1, targets.len() - 1);
                targets.split_at(count)
            }
            None => (&targets[..], &[][..]),
        };
        let batch = if together {
            migrate::move_group(self.node(), first, &to, &extra, &limits)
        } else {
            migrate::move_all(self.node(), first, &to, &extra, &limits)
        };
        self.record(module, &from, &to, batch)?;
        if let Some(canary) = canary {
            let watching = Instant::now();
            let report = self.watch_canary(module, &from, &to, first.len(), rest.len(), &canary);
            self.canary_time += watching.elapsed();
            let passed = report.passed;
            let text = format!(
                "canary of {module} failed on {}; the other {} processes were never moved",
                report.signals.failures_text(),
                rest.len(),
            );
            self.canary = Some(report);
            if !passed {
                return Err((None, text));
            }
            let batch = migrate::move_all(self.node(), rest, &to, &extra, &limits);
            self.record(module, &from, &to, batch)?;
        }
        Ok(())
    }

    /// Keeps what a batch moved (to undo it) and fails on its first failure.
    fn record(
        &mut self,
        module: &str,
        from: &Arc<ModuleCode>,
        to: &Arc<ModuleCode>,
        batch: BatchOutcome,
    ) -> Result<(), (Option<Pid>, String)> {
        self.moved += batch.moved.len();
        self.pauses.extend(batch.pauses);
        self.exited.extend(batch.exited);
        self.counts_before.extend(batch.counts_before);
        self.undo.push(Undo::Moved(MovedSet {
            module: module.to_string(),
            from: Arc::clone(from),
            to: Arc::clone(to),
            processes: batch.moved,
        }));
        match batch.failures.into_iter().next() {
            Some((pid, error)) => Err((Some(pid), error)),
            None => Ok(()),
        }
    }

    /// Watches the canaries against the processes still on `from`.
    fn watch_canary(
        &self,
        module: &str,
        from: &Arc<ModuleCode>,
        to: &Arc<ModuleCode>,
        canaries: usize,
        others: usize,
        canary: &Canary,
    ) -> CanaryReport {
        let (old_before, new_before) = (from.stats(), to.stats());
        let deadline = Instant::now() + canary.window;
        while Instant::now() < deadline {
            let seen = to.stats().since(&new_before);
            if seen.crashes > self.options.max_crashes || seen.undecodable > 0 {
                break;
            }
            std::thread::sleep(
                Duration::from_millis(5).min(deadline.saturating_duration_since(Instant::now())),
            );
        }
        let signals = self.judge(
            std::slice::from_ref(to),
            std::slice::from_ref(&new_before),
            Some((from, &old_before)),
        );
        let (old, new) = (from.stats().since(&old_before), to.stats().since(&new_before));
        CanaryReport {
            module: module.to_string(),
            canaries,
            others,
            new_crashes: new.crashes,
            old_crashes: old.crashes,
            new_handler_us: signals.new_handler_us,
            old_handler_us: signals.old_handler_us,
            passed: signals.failed.is_empty(),
            signals,
        }
    }

    /// Judges the new code `versions` over a window that began at
    /// `before` (one reading per version): crashes, the `health` callbacks,
    /// error replies, undecodable messages and handler time against `old`
    /// (a version and its reading at the window's start; else each
    /// version's predecessor before the upgrade). Every process on the new
    /// code first adds its pending counts to its version's stats, so the
    /// window's counts are complete.
    fn judge(
        &self,
        versions: &[Arc<ModuleCode>],
        before: &[VersionStatsSnapshot],
        old: Option<(&Arc<ModuleCode>, &VersionStatsSnapshot)>,
    ) -> WindowSignals {
        let checks = &self.options.health;
        let limits = self.limits();
        let pids: Vec<Pid> = versions.iter().flat_map(|v| v.processes()).collect();
        let on_new = migrate::check_health(self.node(), &pids, checks.probe == HealthProbe::NewCode, &limits);
        let who = |pid: Pid| match self.node().name_of(pid) {
            Some(name) => format!("{pid} ({name})"),
            None => pid.to_string(),
        };
        let mut health_failures: Vec<String> = on_new
            .failures
            .into_iter()
            .map(|(pid, error)| format!("{} is unhealthy: {error}", who(pid)))
            .collect();
        let mut asked = on_new.asked;
        if let HealthProbe::Process(name) = &checks.probe {
            match self.node().whereis(name) {
                Some(pid) => {
                    let named = migrate::check_health(self.node(), &[pid], true, &limits);
                    asked += named.asked;
                    if named.asked == 0 && named.failures.is_empty() {
                        health_failures.push(format!("the health process {name} exited before it was asked"));
                    }
                    health_failures.extend(
                        named
                            .failures
                            .into_iter()
                            .map(|(pid, error)| format!("{} is unhealthy: {error}", who(pid))),
                    );
                }
                None => health_failures
                    .push(format!("no process is registered as {name:?}, the health process, any more")),
            }
        }
        let seen = window_of(versions, before);
        let baseline = match old {
            Some((code, at)) => {
                let window = code.stats().since(at);
                if window.samples > 0 { window } else { *at }
            }
            None => self.baselines.iter().filter(|(to, _)| versions.iter().any(|v| Arc::ptr_eq(v, to))).fold(
                VersionStatsSnapshot::default(),
                |mut sum, (_, at)| {
                    sum.samples += at.samples;
                    sum.sampled_ns += at.sampled_ns;
                    sum
                },
            ),
        };
        let micros = |stats: &VersionStatsSnapshot| stats.mean_handler_time().map(|d| d.as_secs_f64() * 1e6);
        let mut signals = WindowSignals {
            replies: seen.replies,
            error_replies: seen.error_replies,
            undecodable: seen.undecodable,
            health_asked: asked,
            new_handler_us: micros(&seen),
            old_handler_us: micros(&baseline),
            failed: Vec::new(),
        };
        let mut fail = |signal: Signal, detail: String| signals.failed.push(FailedSignal { signal, detail });
        if seen.crashes > self.options.max_crashes {
            fail(
                Signal::Crashes,
                format!(
                    "{} crash(es) of processes on the new code (at most {} allowed)",
                    seen.crashes, self.options.max_crashes
                ),
            );
        }
        if let Some(first) = health_failures.first() {
            let more = match health_failures.len() {
                1 => String::new(),
                n => format!(" (and {} more of {asked} asked)", n - 1),
            };
            fail(Signal::Health, format!("{first}{more}"));
        }
        if let (Some(max), Some(rate)) = (checks.max_error_rate, signals_rate(&seen))
            && rate > max
        {
            fail(
                Signal::ErrorRate,
                format!(
                    "{:.1}% of {} replies were errors ({} errors; at most {:.1}% allowed)",
                    rate * 100.0,
                    seen.replies,
                    seen.error_replies,
                    max * 100.0
                ),
            );
        }
        if let (Some(max), Some(new), Some(old)) =
            (checks.max_latency_ratio, micros(&seen), micros(&baseline))
            && old > 0.0
            && new > old * max
        {
            fail(
                Signal::Latency,
                format!(
                    "mean handler time {new:.1} µs is {:.2}× the old code's {old:.1} µs (at most {max}× allowed)",
                    new / old
                ),
            );
        }
        if seen.undecodable > 0 {
            fail(
                Signal::Lost,
                format!(
                    "{} cast(s) or message(s) the new code could not decode (a variant it no longer has) were dropped",
                    seen.undecodable
                ),
            );
        }
        signals
    }

    /// Counts, per moved process, messages received and any missing since
    /// its move began.
    fn account(&mut self) {
        for (pid, before) in &self.counts_before {
            if let Some(now) = self.node().mailbox_counts(*pid) {
                self.received += now.received - before.received;
                self.lost += now.missing_since(before);
            }
        }
    }

    /// Watches the new versions for `window`, then judges them; fails
    /// early past `max_crashes` or on a message they could not decode.
    fn watch(&self, window: Duration) -> HealthReport {
        let max_crashes = self.options.max_crashes;
        let mut versions: Vec<Arc<ModuleCode>> = Vec::new();
        for undo in &self.undo {
            let code = match undo {
                Undo::Moved(set) => &set.to,
                Undo::Loaded { code, .. } => code,
                _ => continue,
            };
            if !versions.iter().any(|v| Arc::ptr_eq(v, code)) {
                versions.push(Arc::clone(code));
            }
        }
        let before: Vec<VersionStatsSnapshot> = versions.iter().map(|v| v.stats()).collect();
        let started = Instant::now();
        let deadline = started + window;
        while Instant::now() < deadline {
            let seen = window_of(&versions, &before);
            if seen.crashes > max_crashes || seen.undecodable > 0 {
                break;
            }
            std::thread::sleep(
                Duration::from_millis(5).min(deadline.saturating_duration_since(Instant::now())),
            );
        }
        let watched_ms = started.elapsed().as_secs_f64() * 1e3;
        let signals = self.judge(&versions, &before, None);
        let seen = window_of(&versions, &before);
        HealthReport {
            watched_ms,
            crashes: seen.crashes,
            handled: seen.handled,
            passed: signals.failed.is_empty(),
            signals,
        }
    }

    /// Runs the purges and frees the old states kept for an undo. Returns
    /// the modules purged.
    fn commit(&mut self) -> Vec<String> {
        for undo in &mut self.undo {
            if let Undo::Moved(set) = undo {
                for process in &mut set.processes {
                    process.old_state = None;
                }
            }
        }
        let mut purged = Vec::new();
        for (index, module, mode) in std::mem::take(&mut self.purges) {
            let started = Instant::now();
            let (step, removed) = match mode {
                PurgeMode::Soft => match self.code().soft_purge(&module) {
                    Ok(report) => (
                        format!(
                            "soft_purge {module}: removed {:?}",
                            report.version.as_ref().map(|v| v.to_string())
                        ),
                        report.version.is_some(),
                    ),
                    Err(error) => {
                        tracing::warn!(%module, %error, "soft purge at commit refused");
                        (format!("soft_purge {module} refused: {error}"), false)
                    }
                },
                PurgeMode::Brutal => {
                    let report = self.code().purge(&module);
                    (
                        format!("brutal_purge {module}: killed {}", report.killed.len()),
                        report.version.is_some(),
                    )
                }
            };
            if removed {
                // Nothing can move back to a purged version.
                self.undo.retain(|u| !matches!(u, Undo::Moved(set) if set.module == module));
                purged.push(module);
            }
            self.steps.push(StepReport {
                instruction: index,
                step,
                took_us: started.elapsed().as_secs_f64() * 1e6,
            });
        }
        self.steps.sort_by_key(|s| s.instruction);
        purged
    }

    /// Undoes `undo` in reverse; children stopped or restarted are started
    /// again last, once their old code is current again.
    fn undo_all(&mut self, undo: Vec<Undo>) -> RollbackReport {
        let mut report = RollbackReport::default();
        let mut pauses = Vec::new();
        let mut later = Vec::new();
        let timeout = self.options.child_timeout;
        // An upgrade may give up on a slow process quickly; its undo may
        // not: a process left behind stays on the code being undone.
        let limits = Limits { reach: self.options.suspend_timeout.max(ROLLBACK_MIN_REACH), ..self.limits() };
        for step in undo.into_iter().rev() {
            match step {
                Undo::Moved(set) => {
                    let back = migrate::move_back(self.node(), set, &limits);
                    report.restored += back.restored;
                    report.downgraded += back.downgraded;
                    report.failed.extend(back.failed);
                    pauses.extend(back.pauses);
                }
                Undo::Loaded { module, code, previous } => {
                    // Processes started on the new code since (not moved
                    // by this upgrade) move back first.
                    if code.process_count() > 0
                        && let Some(previous) = previous.clone()
                    {
                        let set = MovedSet {
                            module: module.clone(),
                            from: previous,
                            to: Arc::clone(&code),
                            processes: Vec::new(),
                        };
                        let back = migrate::move_back(self.node(), set, &limits);
                        report.downgraded += back.downgraded;
                        report.failed.extend(back.failed);
                        pauses.extend(back.pauses);
                    }
                    match self.code().unload(&module, code.version()) {
                        Ok(()) => {
                            report.unloaded.push(format!("{module} {}", code.version()));
                            // A later load may have dropped the version this
                            // load replaced (a third version drops an old one
                            // nobody runs); its library is still mapped (held
                            // here), so it is made current again.
                            if let Some(previous) = previous
                                && self.code().current(&module).is_none()
                                && let Err(error) = self.code().install(Arc::clone(&previous))
                            {
                                report.errors.push(format!(
                                    "making {module} {} current again: {error}",
                                    previous.version()
                                ));
                            }
                        }
                        Err(error) => {
                            report.errors.push(format!("unloading {module} {}: {error}", code.version()))
                        }
                    }
                }
                Undo::Deleted { module } => {
                    if let Err(error) = self.code().undelete(&module) {
                        report.errors.push(format!("restoring {module}: {error}"));
                    }
                }
                Undo::Started { supervisor: sup, id } => {
                    let stopped =
                        supervisor::terminate_child(self.node(), sup.as_str(), id.as_str(), timeout)
                            .and_then(|()| supervisor::delete_child(self.node(), sup.as_str(), &id, timeout));
                    if let Err(error) = stopped {
                        report.errors.push(format!("removing child {id} under {sup}: {error}"));
                    }
                }
                Undo::SpecChanged { supervisor: sup, old } => {
                    let id = old.id.clone();
                    if let Err(error) =
                        supervisor::replace_child_spec(self.node(), sup.as_str(), old, timeout)
                    {
                        report.errors.push(format!("restoring the spec of child {id} under {sup}: {error}"));
                    }
                }
                Undo::ConfigChanged { old, new, refused } => {
                    self.node().set_config((*old).clone());
                    let told: Vec<Pid> =
                        self.module_processes().into_iter().filter(|pid| !refused.contains(pid)).collect();
                    let back = migrate::config_change_all(self.node(), &told, &new, &old, &limits);
                    for (pid, _, error) in back.failures {
                        report.errors.push(format!("telling {pid} of the old configuration: {error}"));
                    }
                }
                Undo::FlagsChanged { supervisor: sup, old } => {
                    if let Err(error) = supervisor::change_flags(self.node(), sup.as_str(), old, timeout) {
                        report.errors.push(format!("restoring the flags of supervisor {sup}: {error}"));
                    }
                }
                step @ (Undo::Stopped { .. } | Undo::Restarted { .. }) => later.push(step),
            }
        }
        // Reversed above already: the last stopped starts first, so a
        // subtree's children come back in their start order.
        for step in later {
            let (sup, id, spec) = match step {
                Undo::Stopped { supervisor, id, spec } => (supervisor, id, spec),
                Undo::Restarted { supervisor, id } => (supervisor, id, None),
                _ => continue,
            };
            let error = match self.restart_child(&sup, &id, timeout) {
                Ok(_) => continue,
                // Forgotten by its supervisor (a temporary child): its
                // spec was kept.
                Err(SupervisorError::NotFound(_)) if spec.is_some() => {
                    let spec = spec.expect("checked");
                    match supervisor::start_child(self.node(), sup.as_str(), spec, timeout) {
                        Ok(_) => continue,
                        Err(error) => error,
                    }
                }
                Err(_) => match supervisor::terminate_child(self.node(), sup.as_str(), id.as_str(), timeout)
                    .and_then(|()| supervisor::restart_child(self.node(), sup.as_str(), &id, timeout))
                {
                    Ok(_) => continue,
                    Err(error) => error,
                },
            };
            report.errors.push(format!("starting child {id} under {sup} again: {error}"));
        }
        report.pause = PauseStats::of(&pauses);
        report.pauses = pauses;
        report
    }

    fn restart_child(
        &self,
        sup: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<Pid, supervisor::SupervisorError> {
        supervisor::restart_child(self.node(), sup, id, timeout)
    }

    fn report(&self, plan: &str, outcome: Outcome, rollback: Option<RollbackReport>) -> Report {
        let exited: HashSet<Pid> = self.exited.iter().copied().collect();
        let mut exited: Vec<Pid> = exited.into_iter().collect();
        exited.sort();
        let undecodable: u64 = self.new_versions.iter().map(|v| v.stats().undecodable).sum();
        Report {
            plan: plan.to_string(),
            outcome,
            moved: self.moved,
            exited,
            prepare_ms: self.prepare_time.as_secs_f64() * 1e3,
            upgrade_ms: self.upgrade_time.as_secs_f64() * 1e3,
            total_ms: self.started.elapsed().as_secs_f64() * 1e3,
            pause: PauseStats::of(&self.pauses),
            pause_histogram: PauseHistogram::of(&self.pauses),
            messages_received: self.received,
            messages_lost: self.lost + undecodable,
            messages_undecodable: undecodable,
            steps: self.steps.clone(),
            canary: self.canary.clone(),
            health: self.health.clone(),
            rollback,
        }
    }
}
