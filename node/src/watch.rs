//! What an observer reads while the node changes: the change running now
//! (its phase, processes moved, the health window's time left) and the
//! reports of the last upgrades and rollbacks. The release handler writes
//! it; anyone may read it at any time without taking the handler's locks.
//!
//! The controller tells each process's migration ([`Phase::Migrated`]) from
//! inside that process's turn, so those updates are a relaxed atomic
//! increment; everything else is rare and takes a short lock.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use relive_upgrader::{Phase, PhaseHook, Report};
use serde::Serialize;

use crate::crash;

/// Reports kept for observers, newest last.
pub const KEPT_REPORTS: usize = 20;

/// The change running now and the last reports; see the module doc.
#[derive(Default)]
pub struct ChangeWatch {
    state: Mutex<WatchState>,
    /// Processes migrated in the running change.
    migrated: AtomicU64,
    /// Processes paused at their migration in the running change.
    suspended: AtomicU64,
    /// Bumped whenever what [`ChangeWatch::snapshot`] returns changes
    /// other than by the counters.
    generation: AtomicU64,
}

#[derive(Default)]
struct WatchState {
    change: Option<Running>,
    reports: VecDeque<Arc<KeptReport>>,
    next_report: u64,
}

struct Running {
    what: String,
    started: Instant,
    phase: &'static str,
    health_window: Duration,
    switched: Option<Instant>,
}

/// A change as an observer sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChangeInProgress {
    /// What runs (`a deploy of swarm 2.0.0`, `a rollback`).
    pub what: String,
    /// Since it began, ms.
    pub elapsed_ms: u64,
    /// The controller's last phase (`verifying`, `prepared`, `suspended`,
    /// `migrated`, `switched`, `committed`).
    pub phase: &'static str,
    /// Processes migrated so far.
    pub migrated: u64,
    /// Processes paused at their migration so far.
    pub suspended: u64,
    /// The health window, ms (0: none).
    pub health_window_ms: u64,
    /// Time left in the health window, ms, once it began.
    pub health_left_ms: Option<u64>,
}

/// One upgrade's or rollback's report, numbered in the node's life.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KeptReport {
    /// 1 for the node's first report, and so on.
    pub seq: u64,
    /// When it ended, ms since the Unix epoch.
    pub at_unix_ms: u64,
    /// The change it reports (`a deploy of swarm 2.0.0`).
    pub what: String,
    /// The report.
    pub report: Report,
}

/// What [`ChangeWatch::snapshot`] returns.
#[derive(Clone, Debug)]
pub struct WatchSnapshot {
    /// Changes with each begin, phase, end and report.
    pub generation: u64,
    /// The change running now.
    pub change: Option<ChangeInProgress>,
    /// The last [`KEPT_REPORTS`] reports, oldest first.
    pub reports: Vec<Arc<KeptReport>>,
}

impl ChangeWatch {
    /// A change began.
    pub(crate) fn begin(&self, what: &str) {
        self.migrated.store(0, Ordering::Relaxed);
        self.suspended.store(0, Ordering::Relaxed);
        self.state.lock().change = Some(Running {
            what: what.to_string(),
            started: Instant::now(),
            phase: "verifying",
            health_window: Duration::ZERO,
            switched: None,
        });
        self.bump();
    }

    /// The change ended (its report, if any, was kept before).
    pub(crate) fn end(&self) {
        self.state.lock().change = None;
        self.bump();
    }

    /// Keeps the report of the change running now.
    pub(crate) fn report(&self, report: &Report) {
        let mut state = self.state.lock();
        state.next_report += 1;
        let what = state.change.as_ref().map_or_else(|| report.plan.clone(), |c| c.what.clone());
        let at_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let kept = KeptReport { seq: state.next_report, at_unix_ms, what, report: report.clone() };
        state.reports.push_back(Arc::new(kept));
        while state.reports.len() > KEPT_REPORTS {
            state.reports.pop_front();
        }
        drop(state);
        self.bump();
    }

    /// The hook for the controller's options: records each phase, after
    /// the crash point of that phase when one is armed.
    pub(crate) fn hook(self: &Arc<Self>, crash: Option<crash::Armed>, health_window: Duration) -> PhaseHook {
        if let Some(change) = self.state.lock().change.as_mut() {
            change.health_window = health_window;
        }
        let watch = Arc::clone(self);
        PhaseHook::new(move |phase| {
            if let Some(armed) = &crash {
                armed.at(phase.as_str());
            }
            watch.phase(phase);
        })
    }

    fn phase(&self, phase: Phase) {
        match phase {
            Phase::Suspended => {
                self.suspended.fetch_add(1, Ordering::Relaxed);
            }
            Phase::Migrated => {
                self.migrated.fetch_add(1, Ordering::Relaxed);
            }
            Phase::Prepared | Phase::Switched | Phase::Committed => {
                if let Some(change) = self.state.lock().change.as_mut() {
                    change.phase = phase.as_str();
                    if phase == Phase::Switched {
                        change.switched = Some(Instant::now());
                    }
                }
                self.bump();
            }
        }
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The change running now and the kept reports.
    pub fn snapshot(&self) -> WatchSnapshot {
        let state = self.state.lock();
        let migrated = self.migrated.load(Ordering::Relaxed);
        let suspended = self.suspended.load(Ordering::Relaxed);
        let change = state.change.as_ref().map(|c| {
            let phase = if c.phase == "prepared" && suspended > 0 {
                if migrated > 0 { "migrated" } else { "suspended" }
            } else {
                c.phase
            };
            ChangeInProgress {
                what: c.what.clone(),
                elapsed_ms: c.started.elapsed().as_millis() as u64,
                phase,
                migrated,
                suspended,
                health_window_ms: c.health_window.as_millis() as u64,
                health_left_ms: c
                    .switched
                    .filter(|_| !c.health_window.is_zero())
                    .map(|at| c.health_window.saturating_sub(at.elapsed()).as_millis() as u64),
            }
        });
        WatchSnapshot {
            generation: self.generation.load(Ordering::Acquire),
            change,
            reports: state.reports.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_shows_its_phases_counts_and_health_window() {
        let watch = Arc::new(ChangeWatch::default());
        assert!(watch.snapshot().change.is_none());
        watch.begin("a deploy of swarm 2.0.0");
        let _hook = watch.hook(None, Duration::from_secs(60));
        let before = watch.snapshot().generation;
        // As the controller tells them.
        watch.phase(Phase::Prepared);
        assert_eq!(watch.snapshot().change.expect("running").phase, "prepared");
        for _ in 0..3 {
            watch.phase(Phase::Suspended);
            watch.phase(Phase::Migrated);
        }
        let moving = watch.snapshot();
        let change = moving.change.expect("running");
        assert_eq!((change.phase, change.migrated, change.suspended), ("migrated", 3, 3));
        assert_eq!((change.health_window_ms, change.health_left_ms), (60_000, None));
        assert!(moving.generation > before);
        watch.phase(Phase::Switched);
        let left = watch.snapshot().change.expect("running").health_left_ms.expect("the window began");
        assert!(left <= 60_000 && left > 0, "{left}");
        watch.end();
        assert!(watch.snapshot().change.is_none());
        // The next change counts from zero.
        watch.begin("a rollback");
        assert_eq!(watch.snapshot().change.expect("running").migrated, 0);
    }
}
