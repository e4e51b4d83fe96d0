//! relive-upgrader: upgrade plans and the controller that applies them to
//! a running node, all or nothing.
//!
//! A [`Plan`] is an ordered list of [`Instruction`]s (relive's appup and
//! relup); [`planner::plan`] makes one from two releases. [`Controller::apply`] runs one as a transaction:
//!
//! 1. every library is loaded first; a load error aborts with nothing
//!    changed;
//! 2. each `update` moves its processes to the new version: every process
//!    runs its own migration (export, `code_change`, switch) as a system
//!    task between two of its messages, so it is paused only for that, its
//!    mailbox keeps accepting, and all processes migrate in parallel on
//!    every worker. `suspend_together` is the exception a plan asks for when
//!    processes must not see each other mid-upgrade;
//! 3. the supervision tree follows the release's: changed child specs and
//!    supervisor flags are replaced in place (nothing running restarts;
//!    they apply at the next restart, as OTP's supervisor `code_change`),
//!    whole subtrees stop and start, and a changed application
//!    configuration is set and every running module process's
//!    `config_change` runs (see [`plan`] and [`tree`]);
//! 4. on any failure (a refused or panicking `code_change` or
//!    `config_change`, a process that does not reach its migration in
//!    time, a child that does not start) everything done is undone in
//!    reverse, and the error names the instruction, process and module;
//! 5. an optional canary moves a share first and compares crashes and
//!    handler time per version; an optional health window watches the new
//!    code and rolls back past a crash threshold;
//! 6. commit: purges run (they cannot be undone), kept old states are freed.
//!
//! # Invariants
//!
//! - Upgrades never interleave: one controller runs one at a time and
//!   refuses others ([`UpgradeError::Busy`]).
//! - No message is lost: migrations never touch mailboxes; each moved
//!   process's mailbox accounting is checked and reported.
//! - Undo gives a process back its untouched old state when it has handled
//!   nothing on the new code; otherwise the new version `downgrade`s its
//!   current state, so nothing it did on the new code is lost.

mod controller;
mod migrate;
pub mod plan;
pub mod planner;
mod report;
pub mod tree;

pub use controller::{Canary, Controller, HealthChecks, HealthProbe, Options, Phase, PhaseHook};
pub use plan::{
    ChildDef, Flags, Instruction, Plan, PlanError, ProcessDef, Processes, PurgeMode, ReleaseId, ReleaseStep,
    Restart, Shutdown, Strategy, SupervisorDef,
};
pub use planner::{ModuleView, Planned, PlannerError, ReleaseView};
pub use report::{
    CanaryReport, DryRunFailure, DryRunReport, FailedSignal, Failure, HealthReport, HistogramBucket, Outcome,
    PauseHistogram, PauseStats, Report, RollbackReport, Signal, StepReport, UpgradeError, WindowSignals,
};
