//! The node's control protocol: what a client sends on `<root>/control.sock`
//! and what the node answers. Client and node share these types, so a field
//! renamed on one side fails to compile on the other.
//!
//! # Wire format
//!
//! Newline-delimited JSON, UTF-8, one request line and then reply lines:
//!
//! ```text
//! → {"v":1,"progress":true,"request":{"deploy":{"archive":"/a/kv-1.1.0.tar.gz","permanent":true}}}
//! ← {"progress":{"phase":"verifying the archive"}}
//! ← {"progress":{"phase":"applying kv 1.0.0 → 1.1.0 (3 instructions)"}}
//! ← {"ok":{"deployed":{...}}}
//! ```
//!
//! - A request line is an [`Envelope`]: the protocol version `v` (must be
//!   [`VERSION`]), whether the client wants progress lines, and one
//!   [`Request`]. Unit requests are a bare string (`"request":"status"`).
//! - Each answer line is a [`Reply`]: any number of
//!   [`Reply::Progress`], then exactly one [`Reply::Ok`] or
//!   [`Reply::Error`]. A connection may carry several requests in turn.
//! - Unknown fields and fields of the wrong type are refused, naming the
//!   field by its path (`request.rollback.to: invalid type: integer `5`,
//!   expected a string`): nothing is guessed, no default replaces a bad
//!   value.
//! - A request line is at most [`MAX_LINE_BYTES`]; a longer one, or one
//!   that is not UTF-8, is answered with an error and the connection
//!   closed (its end cannot be found safely).
//!
//! # Versioning
//!
//! [`VERSION`] changes whenever a change would make an older peer
//! misread a line; fields only ever added with a default do not change it.

use std::path::PathBuf;

use relive_releases::store::ReleaseInfo;
use relive_upgrader::{DryRunReport, Planned, Report};

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;

/// The longest request line the node reads (1 MiB).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// One request line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The protocol version the client speaks: [`VERSION`].
    pub v: u32,
    /// Whether the client wants [`Reply::Progress`] lines.
    #[serde(default)]
    pub progress: bool,
    /// What it asks.
    pub request: Request,
}

impl Envelope {
    /// `request` in this build's protocol version.
    pub fn new(request: Request, progress: bool) -> Envelope {
        Envelope { v: VERSION, progress, request }
    }
}

/// What a client can ask of a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Is the node alive? Answered through the release's top supervisor, so
    /// a node whose scheduler is stuck does not answer: [`Response::Pong`].
    Ping,
    /// The node, its release, modules, processes, last upgrade: [`Response::Status`].
    Status,
    /// Every release of the store: [`Response::Releases`].
    Releases,
    /// The plan from the running release to an archive's, without applying it: [`Response::Planned`].
    Plan(PlanRequest),
    /// Upgrade live to an archive's release: [`Response::Deployed`] (or [`Response::DryRun`]).
    Deploy(DeployRequest),
    /// Undo the last deploy, or go to a stored release: [`Response::RolledBack`].
    Rollback(RollbackRequest),
    /// Make the running release permanent: [`Response::Permanent`].
    MakePermanent,
    /// Make the running release permanent if it is the version the caller
    /// names: [`Response::Permanent`]. Checked while no other change can
    /// run, so a deploy or rollback since the caller looked is refused and
    /// nothing changes (`relive make-permanent --version V`, the observer's
    /// confirmation, `relive cluster deploy --permanent`).
    MakePermanentIfRunning(MakePermanentIfRunning),
    /// Remove a release from the store: [`Response::Removed`].
    Remove(RemoveRequest),
    /// Remove unpacked and old releases, keeping the newest: [`Response::Removed`].
    Prune(PruneRequest),
    /// Call a process of the release with a JSON message: [`Response::Reply`].
    Call(MessageRequest),
    /// Cast a JSON message to a process of the release: [`Response::Cast`].
    Cast(MessageRequest),
    /// Stop the node gracefully: [`Response::Stopped`].
    Stop,
}

impl Request {
    /// Make the running release permanent: only if it is `version`, when
    /// given ([`Request::MakePermanentIfRunning`]).
    pub fn make_permanent(version: Option<semver::Version>) -> Request {
        match version {
            Some(version) => Request::MakePermanentIfRunning(MakePermanentIfRunning { version }),
            None => Request::MakePermanent,
        }
    }

    /// The request's name on the wire, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Status => "status",
            Request::Releases => "releases",
            Request::Plan(_) => "plan",
            Request::Deploy(_) => "deploy",
            Request::Rollback(_) => "rollback",
            Request::MakePermanent => "make_permanent",
            Request::MakePermanentIfRunning(_) => "make_permanent_if_running",
            Request::Remove(_) => "remove",
            Request::Prune(_) => "prune",
            Request::Call(_) => "call",
            Request::Cast(_) => "cast",
            Request::Stop => "stop",
        }
    }
}

/// [`Request::Plan`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    /// The archive of the release to go to (absolute: the node resolves it).
    pub archive: PathBuf,
}

/// [`Request::Deploy`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The archive (absolute: the node resolves it).
    pub archive: PathBuf,
    /// Make the release permanent once it runs.
    #[serde(default)]
    pub permanent: bool,
    /// Run every migration on copies of the states; change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Watch the new code this long after the switch; a failed signal
    /// (a crash, by default) rolls it back.
    #[serde(default)]
    pub health_window_ms: u64,
    /// Move this share of each module's processes first and watch them
    /// before moving the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryRequest>,
    /// Crashes on the new code a window tolerates (default 0).
    #[serde(default)]
    pub max_crashes: u64,
    /// Ask only this registered process's `health` callback at the end of
    /// each window, instead of every process on the new code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_process: Option<String>,
    /// The most error replies the new code may answer in a window, in
    /// percent of its replies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate_percent: Option<f64>,
    /// The most the new code's mean handler time may be, as a multiple of
    /// the old code's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_ratio: Option<f64>,
}

/// [`DeployRequest::canary`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryRequest {
    /// Share of each module's processes moved first, in percent (more
    /// than 0, less than 100).
    pub percent: f64,
    /// How long they are watched, ms (more than 0).
    pub window_ms: u64,
}

impl DeployRequest {
    /// How to apply it.
    ///
    /// # Errors
    /// A value out of range, or a threshold without a window to judge
    /// it, named as the `relive deploy` option that sets it.
    pub fn options(&self) -> Result<DeployOptions, String> {
        let windowed = self.health_window_ms > 0 || self.canary.is_some();
        let needs_window = |option: &str| {
            format!(
                "{option} is judged during a canary or health window: add --health-window D or --canary P"
            )
        };
        if let Some(canary) = &self.canary {
            if !(canary.percent > 0.0 && canary.percent < 100.0) {
                return Err(format!(
                    "--canary {}%: the canary's share must be more than 0% and less than 100% (all at once is no canary; drop --canary for that)",
                    canary.percent
                ));
            }
            if canary.window_ms == 0 {
                return Err("--canary-window 0: give the canaries time to be watched (e.g. 5s)".into());
            }
        }
        if self.max_crashes > 0 && !windowed {
            return Err(needs_window("--max-crashes"));
        }
        if let Some(name) = &self.health_process {
            if name.trim().is_empty() {
                return Err("--health-process needs the name of a process of the release".into());
            }
            if !windowed {
                return Err(needs_window("--health-process"));
            }
        }
        if let Some(percent) = self.max_error_rate_percent {
            if !(0.0..=100.0).contains(&percent) {
                return Err(format!("--max-error-rate {percent}%: give a percentage from 0% to 100%"));
            }
            if !windowed {
                return Err(needs_window("--max-error-rate"));
            }
        }
        if let Some(ratio) = self.max_latency_ratio {
            if !(ratio.is_finite() && ratio > 0.0) {
                return Err(format!(
                    "--max-latency-ratio {ratio}: give a positive number (2.0: up to twice the old code's handler time)"
                ));
            }
            if !windowed {
                return Err(needs_window("--max-latency-ratio"));
            }
        }
        Ok(DeployOptions {
            permanent: self.permanent,
            dry_run: self.dry_run,
            health_window: std::time::Duration::from_millis(self.health_window_ms),
            canary: self.canary.as_ref().map(|canary| relive_upgrader::Canary {
                share: canary.percent / 100.0,
                window: std::time::Duration::from_millis(canary.window_ms),
            }),
            max_crashes: self.max_crashes,
            health: relive_upgrader::HealthChecks {
                probe: match &self.health_process {
                    Some(name) => relive_upgrader::HealthProbe::Process(name.clone()),
                    None => relive_upgrader::HealthProbe::NewCode,
                },
                max_error_rate: self.max_error_rate_percent.map(|percent| percent / 100.0),
                max_latency_ratio: self.max_latency_ratio,
            },
        })
    }
}

/// How a deploy (or a rollback to a stored release) is applied.
#[derive(Clone, Debug, Default)]
pub struct DeployOptions {
    /// Make the release permanent once it runs.
    pub permanent: bool,
    /// Run every migration on copies of the states; change nothing.
    pub dry_run: bool,
    /// Watch the new code this long after the switch; a failed signal
    /// rolls it back.
    pub health_window: std::time::Duration,
    /// Move a share of each module's processes first and watch them.
    pub canary: Option<relive_upgrader::Canary>,
    /// Crashes on the new code a window tolerates.
    pub max_crashes: u64,
    /// What the windows judge besides crashes.
    pub health: relive_upgrader::HealthChecks,
}

/// [`Request::Rollback`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// Go to this stored release of the running application instead of
    /// undoing the last deploy.
    #[serde(default)]
    pub to: Option<semver::Version>,
}

/// [`Request::MakePermanentIfRunning`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MakePermanentIfRunning {
    /// The version that must be running (of the running application).
    pub version: semver::Version,
}

/// [`Request::Remove`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveRequest {
    /// The application (default: the running one).
    #[serde(default)]
    pub name: Option<String>,
    /// The version to remove.
    pub version: semver::Version,
}

/// [`Request::Prune`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneRequest {
    /// The application (default: the running one).
    #[serde(default)]
    pub name: Option<String>,
    /// How many unpacked or old releases to keep (the newest).
    pub keep: usize,
}

/// [`Request::Call`] and [`Request::Cast`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageRequest {
    /// The process's registered name.
    pub name: String,
    /// The message, as JSON (the module's serde form).
    pub message: serde_json::Value,
}

/// One answer line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// A step of a long request (only when the envelope asked for them).
    Progress(Progress),
    /// The request succeeded.
    Ok(Response),
    /// The request was refused or failed.
    Error(Failure),
}

/// A step of a long request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// What the node does now, for people.
    pub phase: String,
}

/// What a request returns when it succeeds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// [`Request::Ping`]: the node's pid.
    Pong(u32),
    /// [`Request::Status`].
    Status(Box<Status>),
    /// [`Request::Releases`].
    Releases(Vec<ReleaseInfo>),
    /// [`Request::Plan`].
    Planned(Planned),
    /// [`Request::Deploy`].
    Deployed(Box<Deployed>),
    /// [`Request::Deploy`] with `dry_run`.
    DryRun(Box<DryRun>),
    /// [`Request::Rollback`].
    RolledBack(Box<Deployed>),
    /// [`Request::MakePermanent`] and [`Request::MakePermanentIfRunning`].
    Permanent(Permanent),
    /// [`Request::Remove`] and [`Request::Prune`].
    Removed(Removed),
    /// [`Request::Call`]: the process's reply.
    Reply(serde_json::Value),
    /// [`Request::Cast`]: the message was queued.
    Cast,
    /// [`Request::Stop`]: the node stops (its pid), right after this line.
    Stopped(u32),
}

/// A deploy or rollback that went through.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployed {
    /// The release that runs now, with its state in the store.
    pub release: ReleaseInfo,
    /// The release that ran before.
    pub from: ReleaseInfo,
    /// What the upgrade did.
    pub report: Report,
}

/// A dry run that found no problem.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DryRun {
    /// The release it checked.
    pub release: String,
    /// The plan it would apply, as text.
    pub plan_text: String,
    /// What it found.
    pub report: DryRunReport,
}

/// [`Request::MakePermanent`] and [`Request::MakePermanentIfRunning`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permanent {
    /// The release, now permanent.
    pub release: ReleaseInfo,
    /// It was permanent already: nothing changed.
    pub already: bool,
}

/// [`Request::Remove`] and [`Request::Prune`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Removed {
    /// The releases removed, oldest first.
    pub removed: Vec<ReleaseInfo>,
}

/// Why a request was refused or failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    /// What went wrong, where, and what to do; it also says what the node
    /// runs now.
    pub error: String,
    /// The upgrade's report, when an upgrade ran (aborted or rolled back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Box<Report>>,
    /// A dry run's findings, when a dry run found problems.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<Box<DryRunReport>>,
}

impl Failure {
    /// A failure with nothing but its text.
    pub fn new(error: impl Into<String>) -> Failure {
        Failure { error: error.into(), report: None, dry_run: None }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

/// [`Request::Status`]: the node as it is now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    /// The node's OS pid.
    pub pid: u32,
    /// Its parent's (a heart, when it runs under one).
    pub parent_pid: Option<u32>,
    /// The store's root.
    pub root: PathBuf,
    /// Since the node started, ms.
    pub uptime_ms: u64,
    /// The release that runs, with its state in the store.
    pub release: ReleaseInfo,
    /// The permanent release, when it is not the one that runs (a
    /// restarted node boots it).
    pub permanent: Option<ReleaseInfo>,
    /// What `relive rollback` returns to, if anything.
    pub rollback_to: Option<String>,
    /// The release's top supervisor's name.
    pub supervisor: String,
    /// Every loaded module with its current and old version.
    pub modules: Vec<ModuleStatus>,
    /// The release's processes, grouped by their `[[process]]`.
    pub processes: Vec<ProcessGroup>,
    /// The release's supervision tree: the top supervisor first, then every
    /// `[[supervisor]]`, depth first in start order.
    #[serde(default)]
    pub supervisors: Vec<SupervisorStatus>,
    /// The sockets the node's processes listen on.
    pub listening: Vec<Listening>,
    /// The change that runs now, if any.
    pub busy: Option<String>,
    /// The last upgrade's (or rollback's) report since the node started.
    pub last_report: Option<Report>,
    /// The node's Erlang distribution, when it runs one (`--sname`,
    /// `--name`).
    #[serde(default)]
    pub distribution: Option<DistributionStatus>,
}

/// [`Status::distribution`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributionStatus {
    /// The node's full name, `name@host`.
    pub name: String,
    /// The nodes connected now, sorted.
    pub connected: Vec<String>,
}

/// One loaded module.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleStatus {
    /// Its name.
    pub name: String,
    /// Its current version.
    pub current: Option<ModuleVersion>,
    /// Its old version (processes not yet moved), if any.
    pub old: Option<ModuleVersion>,
}

/// One version of a module.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleVersion {
    /// Its semver.
    pub version: semver::Version,
    /// Its library's sha256.
    pub sha256: String,
    /// Processes running it.
    pub processes: usize,
}

/// One supervisor of the release's tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorStatus {
    /// Its registered name.
    pub name: String,
    /// The supervisor it runs under; `None` for the top one.
    pub parent: Option<String>,
    /// Its strategy, as the manifest spells it (`one_for_one`, ...).
    pub strategy: String,
    /// Most restarts within `period_ms`.
    pub intensity: u32,
    /// The window of `intensity`, ms.
    pub period_ms: u64,
    /// Its pid, `None` while it does not run.
    pub pid: Option<String>,
    /// Its children (for simple_one_for_one: the ones started at run time).
    pub children: usize,
    /// How many of them run.
    pub running: usize,
    /// Times its parent restarted it (0 for the top one).
    pub restarts: u64,
}

/// The processes of one `[[process]]` of the release (N with `instances`;
/// for the template of a simple_one_for_one supervisor, the children
/// started from it, all named after it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessGroup {
    /// The `[[process]]`'s name.
    pub name: String,
    /// Its module.
    pub module: String,
    /// The supervisor it runs under.
    #[serde(default)]
    pub supervisor: String,
    /// How many it runs when it has `instances` (`None`: one process).
    pub instances: Option<usize>,
    /// How many run now.
    pub running: usize,
    /// Restarts by the supervisor, summed over them.
    pub restarts: u64,
    /// Each of them.
    pub children: Vec<ProcessStatus>,
}

/// One process of the release.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessStatus {
    /// Its registered name.
    pub name: String,
    /// Its pid, `None` while it does not run.
    pub pid: Option<String>,
    /// Times its supervisor restarted it.
    pub restarts: u64,
    /// Its restart failed and the supervisor tries again.
    pub restarting: bool,
}

/// A socket a process of the node listens on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listening {
    /// The address (`127.0.0.1:6379`).
    pub addr: String,
    /// The owner's pid.
    pub pid: String,
    /// The owner's registered name, if it has one.
    pub process: Option<String>,
}

/// Decodes one request line, naming the field at fault.
///
/// # Errors
/// The text to send back: what is wrong and where (`request.deploy.permanent:
/// invalid type: string "yes", expected a boolean`), or the version
/// mismatch.
pub fn decode_request(line: &str) -> Result<Envelope, String> {
    let deserializer = &mut serde_json::Deserializer::from_str(line);
    let envelope: Envelope = serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if path == "." || path.is_empty() {
            format!("bad request: {inner}")
        } else {
            format!("bad request: {path}: {inner}")
        }
    })?;
    if envelope.v != VERSION {
        return Err(format!(
            "bad request: protocol version {} is not this node's ({VERSION}): use the relive binary the node runs",
            envelope.v
        ));
    }
    Ok(envelope)
}

/// Encodes one line (without its newline).
pub fn encode<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("protocol values serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(line: &str) -> String {
        decode_request(line).expect_err(line)
    }

    #[test]
    fn requests_round_trip() {
        for request in [
            Request::Status,
            Request::Deploy(DeployRequest {
                archive: "/a.tar.gz".into(),
                permanent: true,
                dry_run: false,
                health_window_ms: 500,
                ..DeployRequest::default()
            }),
            Request::Deploy(DeployRequest {
                archive: "/a.tar.gz".into(),
                canary: Some(CanaryRequest { percent: 10.0, window_ms: 2000 }),
                health_process: Some("checker".into()),
                max_error_rate_percent: Some(5.0),
                max_latency_ratio: Some(2.0),
                max_crashes: 1,
                ..DeployRequest::default()
            }),
            Request::Rollback(RollbackRequest { to: Some(semver::Version::new(1, 0, 0)) }),
            Request::Prune(PruneRequest { name: None, keep: 2 }),
            Request::MakePermanent,
            Request::MakePermanentIfRunning(MakePermanentIfRunning {
                version: semver::Version::new(2, 0, 0),
            }),
            Request::Call(MessageRequest { name: "kv".into(), message: serde_json::json!("Version") }),
        ] {
            let line = encode(&Envelope::new(request.clone(), true));
            assert_eq!(decode_request(&line).unwrap().request, request, "{line}");
        }
        assert_eq!(decode_request(r#"{"v":1,"request":"status"}"#).unwrap().request, Request::Status);
        // An older client's bare "make_permanent" still means "whatever runs".
        assert_eq!(
            decode_request(r#"{"v":1,"request":"make_permanent"}"#).unwrap().request,
            Request::MakePermanent
        );
        assert_eq!(
            decode_request(r#"{"v":1,"request":{"make_permanent_if_running":{"version":"2.0.0"}}}"#)
                .unwrap()
                .request,
            Request::MakePermanentIfRunning(MakePermanentIfRunning {
                version: semver::Version::new(2, 0, 0)
            })
        );
    }

    #[test]
    fn deploy_options_out_of_range_are_refused_naming_the_option() {
        let deploy = |f: fn(&mut DeployRequest)| {
            let mut request = DeployRequest { archive: "/a".into(), ..DeployRequest::default() };
            f(&mut request);
            request.options()
        };
        fn canary(percent: f64, window_ms: u64) -> Option<CanaryRequest> {
            Some(CanaryRequest { percent, window_ms })
        }
        for (error, wanted) in [
            (deploy(|r| r.canary = canary(0.0, 1000)).unwrap_err(), "more than 0%"),
            (deploy(|r| r.canary = canary(100.0, 1000)).unwrap_err(), "less than 100%"),
            (deploy(|r| r.canary = canary(f64::NAN, 1000)).unwrap_err(), "--canary NaN%"),
            (deploy(|r| r.canary = canary(10.0, 0)).unwrap_err(), "--canary-window 0"),
            (deploy(|r| r.max_error_rate_percent = Some(5.0)).unwrap_err(), "--max-error-rate is judged"),
            (
                deploy(|r| {
                    r.health_window_ms = 100;
                    r.max_error_rate_percent = Some(101.0)
                })
                .unwrap_err(),
                "from 0% to 100%",
            ),
            (
                deploy(|r| {
                    r.health_window_ms = 100;
                    r.max_latency_ratio = Some(-1.0)
                })
                .unwrap_err(),
                "--max-latency-ratio -1",
            ),
            (
                deploy(|r| r.health_process = Some("checker".into())).unwrap_err(),
                "--health-process is judged",
            ),
            (deploy(|r| r.max_crashes = 2).unwrap_err(), "--max-crashes is judged"),
        ] {
            assert!(error.contains(wanted), "{error:?} should contain {wanted:?}");
        }
        let options = deploy(|r| {
            r.canary = canary(10.0, 1500);
            r.max_error_rate_percent = Some(5.0);
            r.health_process = Some("checker".into());
        })
        .unwrap();
        let canary = options.canary.unwrap();
        assert_eq!((canary.share, canary.window.as_millis()), (0.1, 1500));
        assert_eq!(options.health.max_error_rate, Some(0.05));
        assert_eq!(options.health.probe, relive_upgrader::HealthProbe::Process("checker".into()));
    }

    #[test]
    fn wrong_types_name_the_field() {
        let error = refused(r#"{"v":1,"request":{"rollback":{"to":5}}}"#);
        assert!(error.contains("request.rollback.to") && error.contains("invalid type"), "{error}");
        let error = refused(r#"{"v":1,"request":{"deploy":{"archive":"/a","permanent":"yes"}}}"#);
        assert!(error.contains("permanent") && error.contains("expected a boolean"), "{error}");
    }

    #[test]
    fn unknown_fields_and_commands_are_refused() {
        let error = refused(r#"{"v":1,"request":{"rollback":{"too":"1.0.0"}}}"#);
        assert!(error.contains("unknown field `too`"), "{error}");
        let error = refused(r#"{"v":1,"request":{"deploy":{"archive":"/a","dry":true}}}"#);
        assert!(error.contains("unknown field `dry`"), "{error}");
        let error = refused(r#"{"v":1,"request":"reboot"}"#);
        assert!(error.contains("unknown variant `reboot`"), "{error}");
        // The untyped protocol of earlier builds.
        let error = refused(r#"{"cmd":"rollback","to":5}"#);
        assert!(error.contains("unknown field `cmd`"), "{error}");
        let error = refused(r#"{"v":2,"request":"status"}"#);
        assert!(error.contains("protocol version 2"), "{error}");
    }
}
