//! What an upgrade did: the report every apply, rollback and dry run
//! returns, and the errors that refuse or abort one.

use std::fmt;
use std::time::Duration;

use relive_runtime::Pid;
use serde::{Deserialize, Serialize};

use crate::plan::PlanError;

/// Pause statistics over the processes an upgrade moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PauseStats {
    /// Processes measured.
    pub count: usize,
    /// Mean pause, µs.
    pub mean_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Longest, µs.
    pub max_us: f64,
}

impl PauseStats {
    /// Statistics of `pauses`.
    pub fn of(pauses: &[Duration]) -> PauseStats {
        if pauses.is_empty() {
            return PauseStats::default();
        }
        let mut micros: Vec<f64> = pauses.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        micros.sort_by(f64::total_cmp);
        let p99 = micros[((micros.len() as f64 * 0.99).ceil() as usize).clamp(1, micros.len()) - 1];
        PauseStats {
            count: micros.len(),
            mean_us: micros.iter().sum::<f64>() / micros.len() as f64,
            p99_us: p99,
            max_us: *micros.last().expect("not empty"),
        }
    }
}

/// How an upgrade ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Every instruction applied; the health window (if any) passed.
    Committed,
    /// An instruction failed; everything done before it was undone.
    Aborted {
        /// What failed.
        failure: Failure,
    },
    /// Applied, then undone: the health window or the canary found the new
    /// code worse, or an explicit rollback was asked for.
    RolledBack {
        /// Why.
        reason: String,
    },
}

/// The instruction, process and module that failed, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The instruction (1-based), as the plan prints it.
    pub instruction: usize,
    /// Its text.
    pub step: String,
    /// The process, when one process failed it.
    pub pid: Option<Pid>,
    /// That process's registered name, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The module concerned.
    pub module: Option<String>,
    /// Why.
    pub error: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "instruction {} ({})", self.instruction, self.step)?;
        let named = |pid: &Pid| match &self.name {
            Some(name) => format!("{pid} ({name})"),
            None => pid.to_string(),
        };
        match (&self.pid, &self.module) {
            (Some(pid), Some(module)) => write!(f, ": process {} of {module}", named(pid))?,
            (None, Some(module)) => write!(f, ": module {module}")?,
            (Some(pid), None) => write!(f, ": process {}", named(pid))?,
            (None, None) => {}
        }
        write!(f, ": {}", self.error)
    }
}

/// How long one instruction took.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Its number (1-based).
    pub instruction: usize,
    /// Its text.
    pub step: String,
    /// How long it took, µs.
    pub took_us: f64,
}

/// What a canary found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanaryReport {
    /// The module.
    pub module: String,
    /// Processes moved first.
    pub canaries: usize,
    /// Processes left on the old version while they were watched.
    pub others: usize,
    /// Crashes of processes on the new version during the window.
    pub new_crashes: u64,
    /// Crashes of processes on the old version during the window.
    pub old_crashes: u64,
    /// Mean handler time on the new version, µs (if sampled).
    pub new_handler_us: Option<f64>,
    /// Mean handler time on the old version, µs (if sampled).
    pub old_handler_us: Option<f64>,
    /// Whether the rest were moved.
    pub passed: bool,
}

/// What the health window saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    /// How long it watched, ms.
    pub watched_ms: f64,
    /// Crashes of processes on the new versions.
    pub crashes: u64,
    /// Messages they handled.
    pub handled: u64,
    /// Whether it passed.
    pub passed: bool,
}

/// What a rollback did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RollbackReport {
    /// Processes given back their untouched old state (they had handled
    /// nothing on the new code).
    pub restored: usize,
    /// Processes moved back through `downgrade` (they had handled
    /// messages on the new code, whose effects are kept).
    pub downgraded: usize,
    /// Processes that could not be moved back, and why. Their version
    /// stays loaded.
    pub failed: Vec<(Pid, String)>,
    /// Module versions unloaded ("counter 2.0.0").
    pub unloaded: Vec<String>,
    /// Other undo steps that failed, and why.
    pub errors: Vec<String>,
    /// Pause of the processes moved back.
    pub pause: PauseStats,
    /// Each pause, for the report of an explicit rollback.
    #[serde(skip)]
    pub(crate) pauses: Vec<std::time::Duration>,
}

impl RollbackReport {
    /// True if everything was undone.
    pub fn complete(&self) -> bool {
        self.failed.is_empty() && self.errors.is_empty()
    }
}

/// The report of one upgrade (or rollback).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The plan's name.
    pub plan: String,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Processes moved to new code (those moved back on a rollback
    /// included).
    pub moved: usize,
    /// Processes that exited during the upgrade before they were moved
    /// (nothing to move; their supervisors restart them on current code).
    pub exited: Vec<Pid>,
    /// Opening the new libraries before the transaction (reading,
    /// checking, copying into the code directory, mapping them), ms. The
    /// node sees none of it.
    pub prepare_ms: f64,
    /// From the first change to the last instruction done: installing the
    /// new code and moving every process, ms.
    pub upgrade_ms: f64,
    /// Including the canary and health windows, and any rollback, ms.
    pub total_ms: f64,
    /// How long each process was paused for its own migration.
    pub pause: PauseStats,
    /// Messages the moved processes received while the upgrade ran.
    pub messages_received: u64,
    /// Of those, messages neither handled nor still queued: 0 unless the
    /// upgrade machinery dropped something (mailbox accounting of each
    /// moved process, see `relive_runtime::MailboxCounts`).
    pub messages_lost: u64,
    /// Each instruction's time.
    pub steps: Vec<StepReport>,
    /// The canary, if one ran.
    pub canary: Option<CanaryReport>,
    /// The health window, if one ran.
    pub health: Option<HealthReport>,
    /// The rollback, if there was one.
    pub rollback: Option<RollbackReport>,
}

impl Report {
    /// True if the upgrade is in place.
    pub fn committed(&self) -> bool {
        self.outcome == Outcome::Committed
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Committed => writeln!(f, "upgrade {}: committed", self.plan)?,
            Outcome::Aborted { failure } => writeln!(f, "upgrade {}: aborted at {failure}", self.plan)?,
            Outcome::RolledBack { reason } => writeln!(f, "upgrade {}: rolled back: {reason}", self.plan)?,
        }
        writeln!(
            f,
            "  moved {} processes in {:.1} ms (total {:.1} ms); pause mean {:.1} µs, p99 {:.1} µs, max {:.1} µs",
            self.moved,
            self.upgrade_ms,
            self.total_ms,
            self.pause.mean_us,
            self.pause.p99_us,
            self.pause.max_us
        )?;
        writeln!(
            f,
            "  messages received during the upgrade {}, lost {}",
            self.messages_received, self.messages_lost
        )?;
        if !self.exited.is_empty() {
            writeln!(f, "  {} processes exited before they were moved", self.exited.len())?;
        }
        if let Some(canary) = &self.canary {
            writeln!(
                f,
                "  canary {}: {} of {} processes first; crashes new {} / old {}; {}",
                canary.module,
                canary.canaries,
                canary.canaries + canary.others,
                canary.new_crashes,
                canary.old_crashes,
                if canary.passed { "passed" } else { "failed" }
            )?;
        }
        if let Some(health) = &self.health {
            writeln!(
                f,
                "  health window {:.0} ms: {} crashes, {} messages handled; {}",
                health.watched_ms,
                health.crashes,
                health.handled,
                if health.passed { "passed" } else { "failed" }
            )?;
        }
        if let Some(rollback) = &self.rollback {
            writeln!(
                f,
                "  rollback: {} restored, {} downgraded, unloaded [{}]{}",
                rollback.restored,
                rollback.downgraded,
                rollback.unloaded.join(", "),
                if rollback.complete() { "" } else { " — INCOMPLETE" }
            )?;
            for (pid, error) in &rollback.failed {
                writeln!(f, "    {pid} stays on new code: {error}")?;
            }
            for error in &rollback.errors {
                writeln!(f, "    {error}")?;
            }
        }
        Ok(())
    }
}

/// What a dry run found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DryRunReport {
    /// The plan's name.
    pub plan: String,
    /// Processes whose state was migrated on a copy.
    pub checked: usize,
    /// Processes whose migration failed, and why.
    pub failures: Vec<DryRunFailure>,
    /// Libraries that would not load.
    pub load_errors: Vec<String>,
}

/// One migration that would fail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DryRunFailure {
    /// The process.
    pub pid: Pid,
    /// Its module.
    pub module: String,
    /// Why.
    pub error: String,
}

impl DryRunReport {
    /// True if the upgrade would go through.
    pub fn ok(&self) -> bool {
        self.failures.is_empty() && self.load_errors.is_empty()
    }
}

/// Why an upgrade was refused or did not commit.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The plan is malformed.
    #[error("the plan is invalid: {0}")]
    Plan(#[from] PlanError),
    /// The node has no code server.
    #[error("the node has no code server: start it with NodeConfig::code_dir")]
    NoCodeServer,
    /// Another upgrade or rollback is running.
    #[error("upgrade {running:?} is running: wait for it to finish (upgrades never interleave)")]
    Busy {
        /// The one running.
        running: String,
    },
    /// Nothing to roll back.
    #[error("no upgrade to roll back")]
    NothingToRollBack,
    /// An instruction failed; the node is as before (see the report's
    /// rollback).
    #[error("upgrade aborted at {failure}; the node is back as it was{}", incomplete(report))]
    Aborted {
        /// What failed.
        failure: Box<Failure>,
        /// The full report.
        report: Box<Report>,
    },
    /// Applied, then rolled back by the canary or the health window.
    #[error("upgrade rolled back: {reason}{}", incomplete(report))]
    RolledBack {
        /// Why.
        reason: String,
        /// The full report.
        report: Box<Report>,
    },
}

fn incomplete(report: &Report) -> String {
    match &report.rollback {
        Some(rollback) if !rollback.complete() => {
            " — but the rollback is incomplete, see the report".to_string()
        }
        _ => String::new(),
    }
}

impl UpgradeError {
    /// The report, for an upgrade that started.
    pub fn report(&self) -> Option<&Report> {
        match self {
            UpgradeError::Aborted { report, .. } | UpgradeError::RolledBack { report, .. } => Some(report),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_percentiles() {
        let pauses: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let stats = PauseStats::of(&pauses);
        assert_eq!((stats.count, stats.p99_us, stats.max_us), (100, 99.0, 100.0));
        assert!((stats.mean_us - 50.5).abs() < 1e-9);
        assert_eq!(PauseStats::of(&[Duration::from_micros(7)]).p99_us, 7.0);
        assert_eq!(PauseStats::of(&[]), PauseStats::default());
    }
}
