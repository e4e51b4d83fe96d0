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

/// Pauses counted in log2 buckets: each bucket holds the pauses longer
/// than half its bound and at most its bound (the first, every pause up
/// to its bound). Buckets run without gaps from the shortest pause's to
/// the longest's; empty when nothing was paused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseHistogram {
    /// Shortest bound first.
    pub buckets: Vec<HistogramBucket>,
}

/// One bucket of a [`PauseHistogram`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistogramBucket {
    /// The bucket's bound, µs: a power of two.
    pub upper_us: u64,
    /// Pauses in it.
    pub count: u64,
}

impl PauseHistogram {
    /// The histogram of `pauses` (each rounded up to a whole µs).
    pub fn of(pauses: &[Duration]) -> PauseHistogram {
        let bound = |pause: &Duration| {
            let micros = u64::try_from(pause.as_nanos().div_ceil(1000)).unwrap_or(u64::MAX).max(1);
            micros.checked_next_power_of_two().unwrap_or(1 << 63)
        };
        let (Some(low), Some(high)) = (pauses.iter().map(bound).min(), pauses.iter().map(bound).max()) else {
            return PauseHistogram::default();
        };
        let mut buckets = Vec::new();
        let mut upper = low;
        loop {
            buckets.push(HistogramBucket { upper_us: upper, count: 0 });
            if upper >= high {
                break;
            }
            upper *= 2;
        }
        for pause in pauses {
            let at = (bound(pause).trailing_zeros() - low.trailing_zeros()) as usize;
            buckets[at].count += 1;
        }
        PauseHistogram { buckets }
    }

    /// Pauses counted.
    pub fn total(&self) -> u64 {
        self.buckets.iter().map(|b| b.count).sum()
    }

    /// Writes one line per bucket, `indent` first: its bound, a bar scaled
    /// to the fullest bucket (`width` characters), and its count.
    pub fn draw(&self, f: &mut impl fmt::Write, indent: &str, width: usize) -> fmt::Result {
        let most = self.buckets.iter().map(|b| b.count).max().unwrap_or(0).max(1);
        let label = |upper: u64| match upper {
            u if u >= 1_000_000 && u % 1_000_000 == 0 => format!("{} s", u / 1_000_000),
            u if u >= 10_000 => format!("{:.1} ms", u as f64 / 1e3),
            u => format!("{u} µs"),
        };
        let labels: Vec<String> = self.buckets.iter().map(|b| label(b.upper_us)).collect();
        let label_width = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
        for (bucket, label) in self.buckets.iter().zip(labels) {
            // A bucket with pauses gets at least one mark.
            let marks = (bucket.count as usize * width).div_ceil(most as usize);
            writeln!(f, "{indent}≤{label:>label_width$} {:<width$} {}", "█".repeat(marks), bucket.count)?;
        }
        Ok(())
    }
}

/// A health signal a canary or health window judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Crashes of processes on the new code.
    Crashes,
    /// A `health` callback said unhealthy (or could not be asked).
    Health,
    /// Error replies of the new code, as a share of its replies.
    ErrorRate,
    /// The new code's mean handler time against the old code's.
    Latency,
    /// Casts and messages the new code could not decode (lost).
    Lost,
}

impl Signal {
    /// Its name, as the report and the CLI's options spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Crashes => "crashes",
            Signal::Health => "health",
            Signal::ErrorRate => "error_rate",
            Signal::Latency => "latency",
            Signal::Lost => "lost",
        }
    }
}

/// A signal that failed a window, and what it saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedSignal {
    /// Which.
    pub signal: Signal,
    /// What it saw against its threshold, for people.
    pub detail: String,
}

impl fmt::Display for FailedSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.signal.as_str(), self.detail)
    }
}

/// What a canary or health window measured of the new code besides
/// crashes, and the signals that failed it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowSignals {
    /// Calls the new code answered during the window.
    pub replies: u64,
    /// Of those, error replies.
    pub error_replies: u64,
    /// Casts and messages the new code could not decode (lost).
    pub undecodable: u64,
    /// Processes whose `health` callback was asked at the window's end.
    pub health_asked: usize,
    /// Mean handler time of the new code during the window, µs (if
    /// sampled).
    pub new_handler_us: Option<f64>,
    /// Mean handler time of the old code it is compared with, µs: the
    /// processes left on it during a canary, else its processes before the
    /// upgrade (if sampled).
    pub old_handler_us: Option<f64>,
    /// The signals that failed the window, in the order judged.
    pub failed: Vec<FailedSignal>,
}

impl WindowSignals {
    /// Error replies as a share of replies, if any were answered.
    pub fn error_rate(&self) -> Option<f64> {
        (self.replies > 0).then(|| self.error_replies as f64 / self.replies as f64)
    }

    /// "crashes: ...; health: ..." for a reason.
    pub fn failures_text(&self) -> String {
        self.failed.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    }

    fn summary(&self) -> String {
        let mut parts = vec![format!("{} of {} replies errors", self.error_replies, self.replies)];
        parts.push(format!("{} undecodable", self.undecodable));
        if self.health_asked > 0 {
            parts.push(format!("health asked of {}", self.health_asked));
        }
        if let (Some(new), Some(old)) = (self.new_handler_us, self.old_handler_us) {
            parts.push(format!("handler {new:.1} µs vs {old:.1} µs"));
        }
        parts.join(", ")
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
    /// The other signals, and which failed (crashes included).
    #[serde(default)]
    pub signals: WindowSignals,
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
    /// The other signals, and which failed (crashes included).
    #[serde(default)]
    pub signals: WindowSignals,
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
    /// new code and moving every process, ms (a canary's window left out:
    /// `total_ms` has it).
    pub upgrade_ms: f64,
    /// Including the canary and health windows, and any rollback, ms.
    pub total_ms: f64,
    /// How long each process was paused for its own migration.
    pub pause: PauseStats,
    /// The same pauses in log2 buckets.
    #[serde(default)]
    pub pause_histogram: PauseHistogram,
    /// Messages the moved processes received while the upgrade ran.
    pub messages_received: u64,
    /// Messages lost: those the moved processes received and neither
    /// handled nor still hold (0 unless the upgrade machinery dropped
    /// something: mailbox accounting of each moved process, see
    /// `relive_runtime::MailboxCounts`), plus `messages_undecodable`.
    pub messages_lost: u64,
    /// Casts and messages the new code could not decode (a variant it
    /// dropped) from its load to the report: dropped unhandled, so lost.
    #[serde(default)]
    pub messages_undecodable: u64,
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
        if !self.pause_histogram.buckets.is_empty() {
            writeln!(f, "  pauses:")?;
            self.pause_histogram.draw(f, "    ", 30)?;
        }
        write!(
            f,
            "  messages received during the upgrade {}, lost {}",
            self.messages_received, self.messages_lost
        )?;
        if self.messages_undecodable > 0 {
            write!(f, " ({} the new code could not decode)", self.messages_undecodable)?;
        }
        writeln!(f)?;
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
            writeln!(f, "    {}", canary.signals.summary())?;
            for failed in &canary.signals.failed {
                writeln!(f, "    failed {failed}")?;
            }
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
            writeln!(f, "    {}", health.signals.summary())?;
            for failed in &health.signals.failed {
                writeln!(f, "    failed {failed}")?;
            }
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
    /// An option is out of range or names what does not exist; nothing
    /// was done.
    #[error("{0}; nothing was changed")]
    BadOptions(String),
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

    #[test]
    fn pause_histogram_buckets_are_log2_and_gapless() {
        let us = Duration::from_micros;
        let pauses =
            [us(1), us(3), us(4), us(5), us(100), Duration::from_nanos(1), Duration::from_nanos(4_001)];
        let histogram = PauseHistogram::of(&pauses);
        let buckets: Vec<(u64, u64)> = histogram.buckets.iter().map(|b| (b.upper_us, b.count)).collect();
        // 1 ns and 1 µs → ≤1; 3, 4 → ≤4; 4.001 and 5 → ≤8; 100 → ≤128;
        // 2, 16, 32, 64 are empty but shown.
        assert_eq!(buckets, vec![(1, 2), (2, 0), (4, 2), (8, 2), (16, 0), (32, 0), (64, 0), (128, 1)]);
        assert_eq!(histogram.total(), pauses.len() as u64);
        assert_eq!(PauseHistogram::of(&[]).buckets, vec![]);
        let json = serde_json::to_value(&histogram).unwrap();
        assert_eq!(json["buckets"][0], serde_json::json!({"upper_us": 1, "count": 2}));

        let mut text = String::new();
        histogram.draw(&mut text, "", 10).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8, "{text}");
        assert!(lines[0].starts_with("≤  1 µs ") && lines[0].ends_with(" 2"), "{text}");
        assert_eq!(lines[0].matches('█').count(), 10, "the fullest bucket fills the width: {text}");
        assert_eq!(lines[1].matches('█').count(), 0, "{text}");
        assert_eq!(lines[7].matches('█').count(), 5, "{text}");
    }
}
