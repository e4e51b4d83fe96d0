//! The release handler: boot, deploy, rollback, make_permanent, remove,
//! prune, status: OTP's `release_handler`, over the store and the upgrade
//! controller.
//!
//! # One record of what runs
//!
//! The store's state file says which release runs (its current one, else
//! its permanent one) and the controller's undo says what a rollback
//! returns to ([`Controller::undo_target`]). The handler keeps no copy of
//! either: every request reads them.
//!
//! # A deploy, all or nothing on disk
//!
//! 1. The archive is opened without blocking, refused unless it is a
//!    regular file under the size cap, read and verified in memory
//!    (checksums, paths, and the signature when the store trusts keys or
//!    the node requires signatures). No lock is held yet: a slow or hostile
//!    archive never makes the node busy.
//! 2. The busy mark is taken (changes never interleave).
//! 3. The libraries are staged, from the verified bytes, into the node's
//!    own code directory (`<root>/run/code`, not the store), where the code
//!    server opens them.
//! 4. The plan is made and applied (or dry-run) by the controller.
//! 5. Only a committed upgrade touches the store: the release is added
//!    (libraries, release directory, state file) and installed, and made
//!    permanent if asked. A refused, failed or dry-run deploy leaves the
//!    store as it was, byte for byte.
//!
//! A crash after step 4 and before step 5 loses nothing that was promised:
//! the deploy was not answered, and the restarted node boots the permanent
//! release, as it would after any crash before `make_permanent`.
//!
//! # Boot
//!
//! The release to boot (the store's permanent one, else its current one)
//! is read back and verified by [`Store::verify_release`]: every library
//! against its sha256, the manifest against the one verified at unpack, the
//! signature against the trusted keys. A release that fails is refused with
//! the file named. A release that was current but not permanent is never
//! booted: the node falls back to the permanent one, as after a crash, and
//! says so in its log, so a damaged current release cannot stop a restart.
//!
//! Once verified, the node's configuration is set to the release's
//! `[config]`, then its whole supervision tree starts
//! (`relive_upgrader::tree::start`): the top supervisor `<release>_sup`
//! with the flags of `[release.supervisor]`, each `[[supervisor]]` and
//! `[[process]]` under its supervisor in the manifest's order, every one
//! registered under its name. Status reads each supervisor's children to
//! show the tree.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use parking_lot::{Mutex, MutexGuard};
use relive_releases::archive::{self, Contents};
use relive_releases::manifest::{self, Manifest};
use relive_releases::store::{ReleaseInfo, ReleaseState, Store, StoreError};
use relive_runtime::supervisor;
use relive_runtime::{CodeServer, ExitReason, Node, NodeConfig, Pid};
use relive_upgrader::planner::{self, Planned, ReleaseView};
use relive_upgrader::{
    ChildDef, Controller, Flags, ModuleView, Options, Plan, ProcessDef, ReleaseId, Restart, Shutdown,
    Strategy, SupervisorDef, UpgradeError,
};

use crate::crash;
use crate::protocol::{
    DeployOptions, Deployed, DistributionStatus, DryRun, Failure, Listening, ModuleStatus, ModuleVersion,
    Permanent, ProcessGroup, ProcessStatus, Progress, Removed, Request, Response, Status, SupervisorStatus,
};
use crate::watch::ChangeWatch;

/// How long a request to a process or a supervisor may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a graceful stop waits for the release's supervisor.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The node's own directory in the root (not part of the store).
pub const RUN_DIR: &str = "run";

/// How a node boots and what it accepts.
#[derive(Clone, Debug)]
pub struct Config {
    /// The store's root.
    pub root: PathBuf,
    /// Unpack (if needed), install and make permanent this archive first.
    pub boot: Option<PathBuf>,
    /// Refuse archives and stored releases without a trusted signature,
    /// even when the store trusts no key (then nothing can be deployed).
    pub require_signed: bool,
    /// The largest archive the node reads.
    pub max_archive_bytes: u64,
}

impl Config {
    /// The defaults for `root`.
    pub fn new(root: impl Into<PathBuf>) -> Config {
        Config {
            root: root.into(),
            boot: None,
            require_signed: false,
            max_archive_bytes: archive::DEFAULT_MAX_ARCHIVE_BYTES,
        }
    }
}

/// Why a node could not boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Another process holds the store (a node runs on this root).
    #[error("cannot start a node: {0}")]
    StoreInUse(#[source] StoreError),
    /// Anything else; the text says what, where, and what to do.
    #[error("{0}")]
    Failed(String),
}

impl From<StoreError> for BootError {
    fn from(error: StoreError) -> BootError {
        match error {
            StoreError::Locked { .. } => BootError::StoreInUse(error),
            other => BootError::Failed(format!("cannot start a node: {other}")),
        }
    }
}

/// An archive read and verified, ready to deploy.
pub struct VerifiedArchive {
    path: PathBuf,
    contents: Contents,
}

impl VerifiedArchive {
    /// Where it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn id(&self) -> ReleaseId {
        let release = &self.contents.manifest.release;
        ReleaseId { name: release.name.clone(), version: release.version.clone() }
    }
}

/// The release handler of one node. See the module doc.
pub struct ReleaseHandler {
    root: PathBuf,
    node: Node,
    code: Arc<CodeServer>,
    controller: Controller,
    supervisor: Pid,
    store: Mutex<Store>,
    require_signed: bool,
    max_archive_bytes: u64,
    /// The last upgrade's report, for status.
    last_report: Mutex<Option<relive_upgrader::Report>>,
    /// The change running now (deploy, rollback, ...).
    busy: Mutex<Option<String>>,
    /// Held for the whole of a change; a stop waits for it.
    change: Mutex<()>,
    stopping: AtomicBool,
    started: Instant,
    /// The change running now and the last reports, for observers.
    watch: Arc<ChangeWatch>,
}

/// Marks a change as running until dropped.
struct Busy<'a> {
    handler: &'a ReleaseHandler,
    _change: MutexGuard<'a, ()>,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.handler.watch.end();
        *self.handler.busy.lock() = None;
    }
}

/// A release a deploy goes to: from an archive (added to the store only
/// once it runs), or already in the store (`rollback --to`).
struct Target {
    id: ReleaseId,
    view: ReleaseView,
    archive: Option<Contents>,
}

/// The keys in `<root>/keys/*.pub`: a store that has any accepts only
/// archives signed by one of them.
///
/// # Errors
/// A key file that cannot be read or is not a key, named.
pub fn trusted_keys(root: &Path) -> Result<Vec<VerifyingKey>, String> {
    let dir = root.join("keys");
    let Ok(entries) = fs::read_dir(&dir) else { return Ok(Vec::new()) };
    let mut keys = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("reading {}: {e}", dir.display()))?.path();
        if path.extension().is_some_and(|e| e == "pub") {
            keys.push(archive::load_verifying_key(&path).map_err(|e| e.to_string())?);
        }
    }
    Ok(keys)
}

fn label(id: &ReleaseId) -> String {
    id.to_string()
}

fn info_label(info: &ReleaseInfo) -> String {
    format!("{} {}", info.name, info.version)
}

fn restart_of(restart: manifest::Restart) -> Restart {
    match restart {
        manifest::Restart::Permanent => Restart::Permanent,
        manifest::Restart::Transient => Restart::Transient,
        manifest::Restart::Temporary => Restart::Temporary,
    }
}

fn shutdown_of(shutdown: manifest::Shutdown) -> Shutdown {
    match shutdown {
        manifest::Shutdown::BrutalKill => Shutdown::BrutalKill,
        manifest::Shutdown::Millis(ms) => Shutdown::Millis(ms),
        manifest::Shutdown::Infinity => Shutdown::Infinity,
    }
}

fn flags_of(flags: manifest::Flags) -> Flags {
    let strategy = match flags.strategy {
        manifest::Strategy::OneForOne => Strategy::OneForOne,
        manifest::Strategy::OneForAll => Strategy::OneForAll,
        manifest::Strategy::RestForOne => Strategy::RestForOne,
        manifest::Strategy::SimpleOneForOne => Strategy::SimpleOneForOne,
    };
    Flags { strategy, intensity: flags.intensity, period_ms: flags.period_ms }
}

/// The planner's (and the boot's) tree of a manifest's supervisor.
fn tree_of(sup: &manifest::TreeSupervisor<'_>) -> SupervisorDef {
    let (restart, shutdown) = match sup.table {
        Some(table) => (restart_of(table.restart), shutdown_of(table.shutdown)),
        None => (Restart::Permanent, Shutdown::Infinity),
    };
    SupervisorDef {
        id: sup.name.clone(),
        flags: flags_of(sup.flags),
        restart,
        shutdown,
        children: sup
            .children
            .iter()
            .map(|child| match child {
                manifest::TreeChild::Process(c) => ChildDef::Process(ProcessDef {
                    id: c.name.clone(),
                    module: c.process.module.clone(),
                    args: c.process.args.clone(),
                    restart: restart_of(c.process.restart),
                    shutdown: shutdown_of(c.process.shutdown),
                }),
                manifest::TreeChild::Supervisor(s) => ChildDef::Supervisor(tree_of(s)),
            })
            .collect(),
    }
}

/// The planner's view of a release: `library` gives each module's sha256
/// and library path.
///
/// # Errors
/// A module `library` has nothing for, named.
pub fn release_view(
    manifest: &Manifest,
    library: impl Fn(&str) -> Option<(String, PathBuf)>,
) -> Result<ReleaseView, String> {
    let release = &manifest.release;
    let modules = manifest
        .modules
        .iter()
        .map(|module| {
            let (sha256, library) = library(&module.name).ok_or_else(|| {
                format!("release {} {}: no library for module {}", release.name, release.version, module.name)
            })?;
            Ok(ModuleView { name: module.name.clone(), sha256, library })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(ReleaseView {
        name: release.name.clone(),
        version: release.version.clone(),
        upgrade_from: release.upgrade_from.clone(),
        modules,
        // A process with `instances` is N children to the planner.
        tree: tree_of(&manifest.tree()),
        config: manifest.config.clone(),
        instructions: manifest.instructions.clone(),
    })
}

/// Writes each library's verified bytes to `dir/<sha256>.so` (atomically;
/// an existing file of that name has those bytes: it was written the same
/// way) and returns the release's view with those paths.
fn stage(dir: &Path, contents: &Contents) -> Result<ReleaseView, String> {
    fs::create_dir_all(dir)
        .map_err(|e| format!("creating the node's code directory {}: {e}", dir.display()))?;
    for library in &contents.libraries {
        let path = dir.join(format!("{}.so", library.sha256));
        if path.exists() {
            continue;
        }
        let tmp = dir.join(format!(".{}.so.tmp", library.sha256));
        let written = (|| {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&library.bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if let Err(error) = written {
            let _ = fs::remove_file(&tmp);
            return Err(format!(
                "staging module {}'s library at {}: {error}",
                library.module,
                path.display()
            ));
        }
    }
    release_view(&contents.manifest, |module| {
        contents.library(module).map(|l| (l.sha256.clone(), dir.join(format!("{}.so", l.sha256))))
    })
}

impl ReleaseHandler {
    /// Opens the store (holding it for the node's life), installs
    /// `config.boot` if given, verifies the release to boot and starts it:
    /// its libraries, its top supervisor `<release>_sup` and its processes,
    /// each registered under its name.
    ///
    /// # Errors
    /// [`BootError::StoreInUse`] when another node holds the store;
    /// [`BootError::Failed`] for everything else (a bad archive, no release
    /// to boot, a release that fails verification, a module that does not
    /// load or start).
    pub fn boot(config: &Config) -> Result<ReleaseHandler, BootError> {
        let root = &config.root;
        let mut store = Store::open(root)?;
        let run = root.join(RUN_DIR);
        // The node's own files from an earlier run: this process holds the
        // store's lock, so no other node uses them.
        if run.exists() {
            fs::remove_dir_all(&run).map_err(|e| {
                BootError::Failed(format!("clearing the node's directory {}: {e}", run.display()))
            })?;
        }
        let code_dir = run.join("code");
        let keys = trusted_keys(root).map_err(BootError::Failed)?;
        let require = config.require_signed || !keys.is_empty();
        let trusted = (!keys.is_empty()).then_some(keys.as_slice());
        if let Some(path) = &config.boot {
            let contents = archive::read_limited(path, config.max_archive_bytes, trusted, require)
                .map_err(|e| BootError::Failed(with_keys(e.to_string(), root, &keys)))?;
            let release = &contents.manifest.release;
            if store.get(&release.name, &release.version).is_some() {
                same_libraries(&store, &contents).map_err(BootError::Failed)?;
            } else {
                store.add_verified(&contents)?;
            }
            match store.install(&release.name, &release.version) {
                Ok(()) | Err(StoreError::AlreadyInstalled { .. }) => {}
                Err(error) => return Err(error.into()),
            }
            store.make_permanent(&release.name, &release.version)?;
            tracing::info!(release = %release.name, version = %release.version, archive = %path.display(), "installed and permanent");
            eprintln!(
                "node: {} {} from {} is installed and permanent",
                release.name,
                release.version,
                path.display()
            );
        }
        let info = store.boot_release().ok_or_else(|| {
            BootError::Failed(format!(
                "the store {} has no release to boot: pass --boot ARCHIVE (a release archive, see `relive release build`)",
                root.display()
            ))
        })?;
        // Only the permanent release boots when there is one (a current
        // one not made permanent is undone below, as after a crash), so
        // there is nothing to fall back to: a release that fails its checks
        // is refused, with the file named.
        let contents = store
            .verify_release(&info.name, &info.version, trusted, require)
            .map_err(|e| BootError::Failed(format!("cannot boot {}: {e}", info_label(&info))))?;
        // A release installed but not made permanent does not survive a
        // restart (OTP's rule): the permanent one runs again, the other is old.
        if let Some(current) = store.current()
            && current != info
        {
            eprintln!(
                "node: {} was current but not permanent; booting the permanent {} instead",
                info_label(&current),
                info_label(&info)
            );
            store.install(&info.name, &info.version)?;
        }
        let view = stage(&code_dir, &contents).map_err(BootError::Failed)?;
        let node = Node::start(NodeConfig { code_dir: Some(code_dir), ..NodeConfig::default() });
        let started = start_release(&node, &contents.manifest, &view);
        let (code, supervisor) = match started {
            Ok(started) => started,
            Err(error) => {
                node.shutdown();
                return Err(BootError::Failed(error));
            }
        };
        let controller = match Controller::new(&node) {
            Ok(controller) => controller,
            Err(error) => {
                node.shutdown();
                return Err(BootError::Failed(error.to_string()));
            }
        };
        eprintln!("node: pid {}, booted {} from {}", std::process::id(), info_label(&info), root.display());
        Ok(ReleaseHandler {
            root: root.clone(),
            node,
            code,
            controller,
            supervisor,
            store: Mutex::new(store),
            require_signed: config.require_signed,
            max_archive_bytes: config.max_archive_bytes,
            last_report: Mutex::new(None),
            busy: Mutex::new(None),
            change: Mutex::new(()),
            stopping: AtomicBool::new(false),
            started: Instant::now(),
            watch: Arc::default(),
        })
    }

    /// The node the release runs on.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The release's top supervisor.
    pub fn supervisor(&self) -> Pid {
        self.supervisor
    }

    /// The store's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The change running now and the last reports (see [`ChangeWatch`]).
    pub fn watch(&self) -> &ChangeWatch {
        &self.watch
    }

    /// Keeps an upgrade's or rollback's report for status and observers.
    fn remember(&self, report: &relive_upgrader::Report) {
        *self.last_report.lock() = Some(report.clone());
        self.watch.report(report);
    }

    /// Whether a stop has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Answers one request. `progress` gets each step of a long one.
    ///
    /// # Errors
    /// The request's [`Failure`]: what went wrong, where, what to do, and
    /// what the node runs now.
    pub fn handle(&self, request: Request, progress: &mut dyn FnMut(Progress)) -> Result<Response, Failure> {
        match request {
            Request::Ping => {
                supervisor::count_children(&self.node, self.supervisor, CALL_TIMEOUT).map_err(|e| {
                    Failure::new(format!(
                        "the node does not answer: its top supervisor {}: {e}",
                        self.supervisor
                    ))
                })?;
                Ok(Response::Pong(std::process::id()))
            }
            Request::Status => Ok(Response::Status(Box::new(self.status()))),
            Request::Releases => Ok(Response::Releases(self.store.lock().which_releases())),
            Request::Plan(plan) => {
                let archive = self.verify_archive(&plan.archive)?;
                self.plan(&archive).map(Response::Planned)
            }
            Request::Deploy(deploy) => {
                progress(Progress { phase: format!("verifying {}", deploy.archive.display()) });
                let options =
                    deploy.options().map_err(|e| Failure::new(format!("{e}; nothing was changed")))?;
                let archive = self.verify_archive(&deploy.archive)?;
                self.deploy(archive, options, progress)
            }
            Request::Rollback(rollback) => self.rollback(rollback.to.as_ref(), progress),
            Request::MakePermanent => self.make_permanent(None).map(Response::Permanent),
            Request::MakePermanentIfRunning(request) => {
                self.make_permanent(Some(&request.version)).map(Response::Permanent)
            }
            Request::Remove(remove) => self
                .remove(remove.name.as_deref(), &remove.version)
                .map(|info| Response::Removed(Removed { removed: vec![info] })),
            Request::Prune(prune) => self
                .prune(prune.name.as_deref(), prune.keep)
                .map(|removed| Response::Removed(Removed { removed })),
            Request::Call(call) => {
                let pid = self.resolve(&call.name)?;
                let reply = self
                    .node
                    .call_json(pid, &call.message, CALL_TIMEOUT)
                    .map_err(|e| Failure::new(format!("call to {}: {e}", call.name)))?;
                Ok(Response::Reply(reply))
            }
            Request::Cast(cast) => {
                let pid = self.resolve(&cast.name)?;
                self.node
                    .cast_json(pid, &cast.message)
                    .map_err(|e| Failure::new(format!("cast to {}: {e}", cast.name)))?;
                Ok(Response::Cast)
            }
            Request::Stop => {
                self.stop();
                Ok(Response::Stopped(std::process::id()))
            }
        }
    }

    /// Starts a change, or refuses while another runs or the node stops.
    fn begin(&self, what: String) -> Result<Busy<'_>, Failure> {
        let mut busy = self.busy.lock();
        if self.is_stopping() {
            return Err(Failure::new("the node is stopping"));
        }
        if let Some(other) = busy.as_ref() {
            return Err(Failure::new(format!(
                "{other} is running: wait for it to finish and try again (changes never interleave)"
            )));
        }
        self.watch.begin(&what);
        *busy = Some(what);
        drop(busy);
        Ok(Busy { handler: self, _change: self.change.lock() })
    }

    /// The keys to check signatures with, and whether a signature is required.
    fn trust(&self) -> Result<(Vec<VerifyingKey>, bool), Failure> {
        let keys = trusted_keys(&self.root).map_err(Failure::new)?;
        let require = self.require_signed || !keys.is_empty();
        Ok((keys, require))
    }

    /// Reads and verifies the archive at `path`; nothing is locked or
    /// written.
    ///
    /// # Errors
    /// Not a regular file, over the size cap, corrupt, unsigned or signed
    /// by a key the node does not trust: the failure names the archive.
    pub fn verify_archive(&self, path: &Path) -> Result<VerifiedArchive, Failure> {
        let (keys, require) = self.trust()?;
        let trusted = (!keys.is_empty()).then_some(keys.as_slice());
        let contents =
            archive::read_limited(path, self.max_archive_bytes, trusted, require).map_err(|e| {
                Failure::new(format!("{}; nothing was changed", with_keys(e.to_string(), &self.root, &keys)))
            })?;
        Ok(VerifiedArchive { path: path.to_path_buf(), contents })
    }

    /// The release that runs, from the store, and its view.
    fn running(&self) -> Result<(ReleaseInfo, ReleaseView), Failure> {
        let store = self.store.lock();
        let info = store.running().ok_or_else(|| Failure::new("the store records no running release"))?;
        let stored = store.release(&info.name, &info.version).map_err(|e| Failure::new(e.to_string()))?;
        let manifest =
            Manifest::parse(&stored.manifest_text, &stored.dir.join(relive_releases::store::MANIFEST_FILE))
                .map_err(|e| Failure::new(e.to_string()))?;
        let view = release_view(&manifest, |module| {
            stored.modules.get(module).map(|sha| (sha.clone(), store.library_path(sha)))
        })
        .map_err(Failure::new)?;
        Ok((info, view))
    }

    fn code_dir(&self) -> PathBuf {
        self.code.dir().to_path_buf()
    }

    /// The plan from the running release to `target`, or why there is none.
    fn plan_to(&self, running: &(ReleaseInfo, ReleaseView), target: &Target) -> Result<Plan, Failure> {
        let (info, view) = running;
        let now = info_label(info);
        if target.id.name != info.name {
            return Err(Failure::new(format!(
                "{} is another application; this node runs {now}: deploy a release of {} (nothing was changed)",
                label(&target.id),
                info.name
            )));
        }
        if target.id.version == info.version {
            return Err(Failure::new(format!(
                "{} already runs on this node: nothing to deploy",
                label(&target.id)
            )));
        }
        match planner::plan(view, &target.view).map_err(|e| Failure::new(e.to_string()))? {
            Planned::Upgrade { plan, .. } => Ok(plan),
            Planned::Restart { reason } => Err(Failure::new(format!(
                "{} cannot be deployed live: {reason}; the node keeps running {now} (nothing was changed)",
                label(&target.id)
            ))),
        }
    }

    fn plan(&self, archive: &VerifiedArchive) -> Result<Planned, Failure> {
        let running = self.running()?;
        let view = stage(&self.code_dir(), &archive.contents).map_err(Failure::new)?;
        planner::plan(&running.1, &view).map_err(|e| Failure::new(e.to_string()))
    }

    /// Deploys a verified archive's release live (see the module doc).
    ///
    /// # Errors
    /// Refused (another application, the same version, only a restart
    /// gets there, a change already running, a version already in the
    /// store with other libraries) or failed (the upgrade aborted or was
    /// rolled back, with its report); the store is then unchanged.
    pub fn deploy(
        &self,
        archive: VerifiedArchive,
        options: DeployOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Response, Failure> {
        let id = archive.id();
        let _busy = self.begin(format!("a deploy of {}", label(&id)))?;
        {
            let store = self.store.lock();
            if store.get(&id.name, &id.version).is_some() {
                same_libraries(&store, &archive.contents).map_err(Failure::new)?;
            }
        }
        let view = stage(&self.code_dir(), &archive.contents).map_err(Failure::new)?;
        let target = Target { id, view, archive: Some(archive.contents) };
        self.apply_to(target, options, progress)
    }

    /// Plans and applies a deploy to `target` (the caller holds the busy mark).
    fn apply_to(
        &self,
        target: Target,
        options: DeployOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Response, Failure> {
        let running = self.running()?;
        let plan = self.plan_to(&running, &target)?;
        let (from, _) = running;
        let now = info_label(&from);
        let to = label(&target.id);
        let crash = crash::armed();
        let crash_at = |point: &str| {
            if let Some(armed) = &crash {
                armed.at(point);
            }
        };
        crash_at("verified");
        let on_phase = Some(self.watch.hook(crash.clone(), options.health_window));
        let controller_options = Options {
            health_window: options.health_window,
            max_crashes: options.max_crashes,
            canary: options.canary.clone(),
            health: options.health.clone(),
            on_phase,
            ..Options::default()
        };
        if options.dry_run {
            progress(Progress {
                phase: format!("dry run of {}: migrating copies of every state", plan.name),
            });
            let report = self
                .controller
                .dry_run(&plan, &controller_options)
                .map_err(|e| Failure::new(format!("{e}; nothing was changed")))?;
            if report.ok() {
                return Ok(Response::DryRun(Box::new(DryRun {
                    release: to,
                    plan_text: plan.to_string(),
                    report,
                })));
            }
            return Err(Failure {
                error: format!("the dry run of {to} found problems; nothing was changed"),
                report: None,
                dry_run: Some(Box::new(report)),
            });
        }
        let mut phase = format!("applying {} ({} instructions)", plan.name, plan.instructions.len());
        if let Some(canary) = &options.canary {
            phase.push_str(&format!(
                ", moving {:.0}% of each module's processes first and watching them for {:?}",
                canary.share * 100.0,
                canary.window
            ));
        }
        if !options.health_window.is_zero() {
            phase.push_str(&format!(", then watching a {:?} health window", options.health_window));
        }
        progress(Progress { phase });
        eprintln!("node: deploying {to} over {now}");
        let report = match self.controller.apply(&plan, &controller_options) {
            Ok(report) => report,
            Err(error) => {
                eprintln!("node: deploying {to} failed: {error}");
                let report = error.report().cloned().map(Box::new);
                if let Some(report) = &report {
                    self.remember(report);
                }
                return Err(Failure {
                    error: format!(
                        "deploying {to}: {error}; the node still runs {now}; nothing was changed in the store"
                    ),
                    report,
                    dry_run: None,
                });
            }
        };
        self.remember(&report);
        progress(Progress { phase: format!("recording {to} in the store") });
        let recorded = self.record(&target, options.permanent, &crash_at);
        match recorded {
            Ok(release) => {
                eprintln!("node: {to} deployed");
                Ok(Response::Deployed(Box::new(Deployed { release, from, report })))
            }
            Err(Recorded::NotInstalled(error)) => {
                let undone = match self.controller.rollback(&Options::default()) {
                    Ok(_) => format!("the upgrade was rolled back; the node runs {now}"),
                    Err(e) => format!(
                        "rolling the upgrade back failed too ({e}); the node runs {to} but the store says {now}"
                    ),
                };
                Err(Failure {
                    error: format!("{to} was applied but the store could not record it: {error}; {undone}"),
                    report: Some(Box::new(report)),
                    dry_run: None,
                })
            }
            Err(Recorded::NotPermanent(error)) => Err(Failure {
                error: format!("{to} runs now, but making it permanent failed: {error}"),
                report: Some(Box::new(report)),
                dry_run: None,
            }),
        }
    }

    /// Writes a release that now runs into the store: added (from its
    /// archive) if new, installed, made permanent if asked.
    fn record(
        &self,
        target: &Target,
        permanent: bool,
        crash_at: &dyn Fn(&str),
    ) -> Result<ReleaseInfo, Recorded> {
        let mut store = self.store.lock();
        let (name, version) = (&target.id.name, &target.id.version);
        let added = match &target.archive {
            Some(contents) if store.get(name, version).is_none() => {
                store.add_verified(contents).map_err(|e| Recorded::NotInstalled(e.to_string()))?;
                true
            }
            _ => false,
        };
        if let Err(error) = store.install(name, version) {
            if added {
                // What the refused change added goes again, so the store
                // stays as it was.
                let _ = store.remove(name, version);
            }
            return Err(Recorded::NotInstalled(error.to_string()));
        }
        // Between the two state changes: a crash here leaves the release
        // current, not permanent, and the restart boots the permanent one.
        crash_at("installed");
        if permanent {
            store.make_permanent(name, version).map_err(|e| Recorded::NotPermanent(e.to_string()))?;
        }
        store
            .get(name, version)
            .ok_or_else(|| Recorded::NotInstalled("the release vanished from the store".into()))
    }

    /// Undoes the last deploy (`to` `None` or its release), or goes to
    /// the stored release `to` like a deploy (live when the newer of the two
    /// upgrades from the older one).
    ///
    /// # Errors
    /// Nothing to roll back, no such release, or the rollback failed (with
    /// its report).
    pub fn rollback(
        &self,
        to: Option<&semver::Version>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Response, Failure> {
        let _busy = self.begin("a rollback".into())?;
        let (from, _) = self.running()?;
        let undo = self.controller.undo_target();
        if let Some(version) = to
            && undo.as_ref().is_none_or(|step| &step.from.version != version)
        {
            progress(Progress {
                phase: format!("planning {} → {version} from the store", info_label(&from)),
            });
            let (keys, require) = self.trust()?;
            let trusted = (!keys.is_empty()).then_some(keys.as_slice());
            let contents = self
                .store
                .lock()
                .verify_release(&from.name, version, trusted, require)
                .map_err(|e| Failure::new(format!("{e}; nothing was changed")))?;
            let view = stage(&self.code_dir(), &contents).map_err(Failure::new)?;
            let id = ReleaseId { name: from.name.clone(), version: version.clone() };
            let response =
                self.apply_to(Target { id, view, archive: None }, DeployOptions::default(), progress)?;
            return Ok(match response {
                Response::Deployed(deployed) => Response::RolledBack(deployed),
                other => other,
            });
        }
        let Some(step) = undo else {
            return Err(Failure::new(format!(
                "nothing to roll back: no deploy has been applied since the node started (it runs {}); `relive rollback --to VERSION` goes to a stored release",
                info_label(&from)
            )));
        };
        let back = label(&step.from);
        eprintln!("node: rolling back {} to {back}", info_label(&from));
        let watched = Options { on_phase: Some(self.watch.hook(None, Duration::ZERO)), ..Options::default() };
        let report = match self.controller.rollback(&watched) {
            Ok(report) => report,
            Err(UpgradeError::NothingToRollBack) => {
                return Err(Failure::new(format!(
                    "nothing to roll back (the node runs {})",
                    info_label(&from)
                )));
            }
            Err(error) => {
                return Err(Failure {
                    error: format!(
                        "rolling back to {back}: {error}; the node still runs {}",
                        info_label(&from)
                    ),
                    report: error.report().cloned().map(Box::new),
                    dry_run: None,
                });
            }
        };
        self.remember(&report);
        if let Some(undone) = report.rollback.as_ref().filter(|r| !r.complete()) {
            // Some processes still run the new code: the store keeps
            // recording the release that runs, not the one half reached.
            let why: Vec<String> = undone
                .failed
                .iter()
                .map(|(pid, error)| format!("{pid}: {error}"))
                .chain(undone.errors.iter().cloned())
                .collect();
            return Err(Failure {
                error: format!(
                    "the rollback to {back} is incomplete ({}); the store still records {} as current: \
                     fix what failed, then deploy the release you want",
                    why.join("; "),
                    info_label(&from)
                ),
                report: Some(Box::new(report)),
                dry_run: None,
            });
        }
        let mut store = self.store.lock();
        if let Err(error) = store.install(&step.from.name, &step.from.version) {
            return Err(Failure {
                error: format!("rolled back live to {back}, but the store could not record it: {error}"),
                report: Some(Box::new(report)),
                dry_run: None,
            });
        }
        let release = store.get(&step.from.name, &step.from.version).ok_or_else(|| {
            Failure::new(format!("rolled back live to {back}, which the store no longer lists"))
        })?;
        eprintln!("node: rolled back to {back}");
        Ok(Response::RolledBack(Box::new(Deployed { release, from, report })))
    }

    /// Makes the running release permanent; with `expected`, only if that
    /// version runs. The check holds the change guard, so no deploy or
    /// rollback can come between it and the store's write.
    ///
    /// # Errors
    /// Another version runs (nothing is changed), or the store refused or
    /// failed.
    pub fn make_permanent(&self, expected: Option<&semver::Version>) -> Result<Permanent, Failure> {
        let _busy = self.begin("make-permanent".into())?;
        let mut store = self.store.lock();
        let running = store.running().ok_or_else(|| Failure::new("the store records no running release"))?;
        if let Some(expected) = expected
            && running.version != *expected
        {
            return Err(Failure::new(format!(
                "{} {} runs now, not {expected} (a deploy or rollback happened since): nothing was changed; \
                 look at `relive status` and ask again",
                running.name, running.version
            )));
        }
        let already = running.state == ReleaseState::Permanent;
        store.make_permanent(&running.name, &running.version).map_err(|e| Failure::new(e.to_string()))?;
        let release = store.get(&running.name, &running.version).unwrap_or(running);
        if !already {
            eprintln!("node: {} is permanent", info_label(&release));
        }
        Ok(Permanent { release, already })
    }

    fn app_name(&self, name: Option<&str>) -> Result<String, Failure> {
        match name {
            Some(name) => Ok(name.to_string()),
            None => Ok(self.running()?.0.name),
        }
    }

    /// Removes a release from the store (not the current, the permanent,
    /// or what a rollback returns to), freeing the code no other release
    /// uses.
    ///
    /// # Errors
    /// No such release, or it is in use.
    pub fn remove(&self, name: Option<&str>, version: &semver::Version) -> Result<ReleaseInfo, Failure> {
        let _busy = self.begin(format!("removing {version}"))?;
        let name = self.app_name(name)?;
        if let Some(step) = self.controller.undo_target()
            && step.from.name == name
            && &step.from.version == version
        {
            return Err(Failure::new(format!(
                "cannot remove {name} {version}: `relive rollback` returns to it; nothing was changed"
            )));
        }
        let mut store = self.store.lock();
        let info = store.get(&name, version).ok_or_else(|| {
            Failure::new(format!("no release {name} {version} in the store {}", self.root.display()))
        })?;
        store.remove(&name, version).map_err(|e| Failure::new(e.to_string()))?;
        eprintln!("node: removed {}", info_label(&info));
        Ok(info)
    }

    /// Removes the unpacked and old releases of an application but the
    /// newest `keep` (and what a rollback returns to).
    ///
    /// # Errors
    /// The store failed.
    pub fn prune(&self, name: Option<&str>, keep: usize) -> Result<Vec<ReleaseInfo>, Failure> {
        let _busy = self.begin("a prune".into())?;
        let name = self.app_name(name)?;
        let spare: Vec<semver::Version> = self
            .controller
            .undo_target()
            .filter(|step| step.from.name == name)
            .map(|step| step.from.version)
            .into_iter()
            .collect();
        let removed =
            self.store.lock().prune(&name, keep, &spare).map_err(|e| Failure::new(e.to_string()))?;
        for info in &removed {
            eprintln!("node: pruned {}", info_label(info));
        }
        Ok(removed)
    }

    /// The pid registered as `name`.
    fn resolve(&self, name: &str) -> Result<Pid, Failure> {
        self.node.whereis(name).ok_or_else(|| {
            // A release may run thousands (`instances`): name a few.
            const SHOWN: usize = 8;
            let running = self.running().ok();
            let processes = running.as_ref().map(|r| r.1.processes()).unwrap_or_default();
            let mut names: Vec<&str> = processes.iter().take(SHOWN).map(|p| p.id.as_str()).collect();
            let more = processes.len().saturating_sub(SHOWN);
            let more = if more > 0 { format!(" … and {more} more") } else { String::new() };
            if names.is_empty() {
                names.push("none");
            }
            Failure::new(format!(
                "no process named {name:?} runs on this node (the release's processes: {}{more}; \
                 `relive status` lists them with their pids)",
                names.join(", ")
            ))
        })
    }

    /// The node as it is now.
    pub fn status(&self) -> Status {
        let store = self.store.lock();
        let release = store.running().unwrap_or_else(|| ReleaseInfo {
            name: "?".into(),
            version: semver::Version::new(0, 0, 0),
            state: ReleaseState::Unpacked,
        });
        let permanent = store.permanent().filter(|p| *p != release);
        let manifest = store.release(&release.name, &release.version).ok().and_then(|stored| {
            Manifest::parse(&stored.manifest_text, &stored.dir.join(relive_releases::store::MANIFEST_FILE))
                .ok()
        });
        drop(store);
        let modules = self
            .code
            .which_modules()
            .into_iter()
            .map(|m| {
                let version = |v: &Option<relive_runtime::VersionInfo>| {
                    v.as_ref().map(|v| ModuleVersion {
                        version: v.version.clone(),
                        sha256: v.sha256.clone(),
                        processes: v.processes,
                    })
                };
                ModuleStatus { name: m.name.clone(), current: version(&m.current), old: version(&m.old) }
            })
            .collect();
        let sup = planner::supervisor_name(&release.name);
        let (processes, supervisors) = match &manifest {
            Some(manifest) => self.tree_status(manifest),
            None => (Vec::new(), Vec::new()),
        };
        let listening = self
            .node
            .listeners()
            .into_iter()
            .map(|l| Listening {
                addr: l.addr.to_string(),
                pid: l.owner.to_string(),
                process: self.node.name_of(l.owner).map(|n| n.to_string()),
            })
            .collect();
        Status {
            pid: std::process::id(),
            parent_pid: rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32),
            root: self.root.clone(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            release,
            permanent,
            rollback_to: self.controller.undo_target().map(|step| label(&step.from)),
            supervisor: sup,
            modules,
            processes,
            supervisors,
            listening,
            busy: self.busy.lock().clone(),
            last_report: self.last_report.lock().clone(),
            distribution: self
                .node
                .remote_info()
                .map(|info| DistributionStatus { name: info.node, connected: info.connected }),
        }
    }

    /// The processes (by `[[process]]`) and supervisors of the running
    /// tree, from each supervisor's `which_children`.
    fn tree_status(&self, manifest: &Manifest) -> (Vec<ProcessGroup>, Vec<SupervisorStatus>) {
        let tree = manifest.tree();
        let mut flat: Vec<(Option<String>, &manifest::TreeSupervisor<'_>)> = vec![(None, &tree)];
        let mut at = 0;
        while at < flat.len() {
            let (_, sup) = flat[at];
            for child in &sup.children {
                if let manifest::TreeChild::Supervisor(nested) = child {
                    flat.push((Some(sup.name.clone()), nested));
                }
            }
            at += 1;
        }
        // Each supervisor's children, in its order.
        let children: BTreeMap<&str, Vec<supervisor::ChildInfo>> = flat
            .iter()
            .map(|(_, sup)| {
                let children = supervisor::which_children(&self.node, sup.name.as_str(), CALL_TIMEOUT)
                    .unwrap_or_default();
                (sup.name.as_str(), children)
            })
            .collect();
        // By supervisor and id: a release may run tens of thousands.
        let by_id: std::collections::HashMap<(&str, &str), &supervisor::ChildInfo> =
            children.iter().flat_map(|(sup, list)| list.iter().map(move |c| ((*sup, &*c.id), c))).collect();
        let info = |sup: &str, id: &str| by_id.get(&(sup, id)).copied();
        let supervisors = flat
            .iter()
            .map(|(parent, sup)| {
                let own = children.get(sup.name.as_str()).map(Vec::as_slice).unwrap_or_default();
                let as_child = parent.as_deref().and_then(|parent| info(parent, &sup.name));
                SupervisorStatus {
                    name: sup.name.clone(),
                    parent: parent.clone(),
                    strategy: sup.flags.strategy.to_string(),
                    intensity: sup.flags.intensity,
                    period_ms: sup.flags.period_ms,
                    pid: self.node.whereis(&sup.name).map(|p| p.to_string()),
                    children: own.len(),
                    running: own.iter().filter(|c| c.pid.is_some()).count(),
                    restarts: as_child.map_or(0, |c| c.restarts),
                }
            })
            .collect();
        let top = manifest.supervisor_name();
        let processes = manifest
            .processes
            .iter()
            .map(|process| {
                let sup = process.supervisor.clone().unwrap_or_else(|| top.clone());
                let status = |name: String, child: Option<&supervisor::ChildInfo>| ProcessStatus {
                    pid: child.and_then(|c| c.pid).map(|p| p.to_string()),
                    restarts: child.map_or(0, |c| c.restarts),
                    restarting: child.is_some_and(|c| c.restarting),
                    name,
                };
                let simple = flat
                    .iter()
                    .any(|(_, s)| s.name == sup && s.flags.strategy == manifest::Strategy::SimpleOneForOne);
                let list: Vec<ProcessStatus> = if simple {
                    // The children started from the template share its id
                    // (and are not registered).
                    children
                        .get(sup.as_str())
                        .into_iter()
                        .flatten()
                        .map(|c| status(process.name.clone(), Some(c)))
                        .collect()
                } else {
                    process
                        .names()
                        .map(|name| {
                            let child = info(&sup, &name);
                            status(name, child)
                        })
                        .collect()
                };
                ProcessGroup {
                    name: process.name.clone(),
                    module: process.module.clone(),
                    supervisor: sup,
                    instances: process.instances.map(|n| n as usize),
                    running: list.iter().filter(|c| c.pid.is_some()).count(),
                    restarts: list.iter().map(|c| c.restarts).sum(),
                    children: list,
                }
            })
            .collect();
        (processes, supervisors)
    }

    /// Stops gracefully: refuses new changes, waits for the one running,
    /// stops the release's processes (its supervisor stops them in order)
    /// and the node. The caller answers and exits.
    pub fn stop(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        let _change = self.change.lock();
        let waiter = self.node.exit_waiter(self.supervisor);
        self.node.exit(self.supervisor, ExitReason::Shutdown);
        if waiter.wait(STOP_TIMEOUT).is_none() {
            eprintln!(
                "node: the supervisor did not stop within {STOP_TIMEOUT:?}; shutting the node down anyway"
            );
        }
        self.node.shutdown();
    }
}

/// Why a release that runs could not be recorded.
enum Recorded {
    NotInstalled(String),
    NotPermanent(String),
}

/// Refuses an archive whose release the store has with other libraries.
fn same_libraries(store: &Store, contents: &Contents) -> Result<(), String> {
    let release = &contents.manifest.release;
    let stored = store.release(&release.name, &release.version).map_err(|e| e.to_string())?;
    let same = contents.libraries.len() == stored.modules.len()
        && contents.libraries.iter().all(|l| stored.modules.get(&l.module) == Some(&l.sha256));
    if same {
        return Ok(());
    }
    Err(format!(
        "release {} {} is already in the store {} ({}) with other libraries: remove it with `relive release remove {}` or build a new version; nothing was changed",
        release.name,
        release.version,
        store.root().display(),
        stored.info.state,
        release.version
    ))
}

/// Adds which keys the store trusts to a signature error.
fn with_keys(error: String, root: &Path, keys: &[VerifyingKey]) -> String {
    if !(error.contains("sign") || error.contains("release.sig")) {
        return error;
    }
    if keys.is_empty() {
        return format!(
            "{error} (the node requires signatures and {} holds no trusted key)",
            root.join("keys").display()
        );
    }
    let keys: Vec<String> = keys.iter().map(hex_key).collect();
    format!(
        "{error} (this node trusts the key{} {} in {})",
        if keys.len() == 1 { "" } else { "s" },
        keys.join(", "),
        root.join("keys").display()
    )
}

fn hex_key(key: &VerifyingKey) -> String {
    key.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Sets the node's configuration to the release's `[config]`, loads the
/// release's libraries and starts its supervision tree: the top
/// supervisor `<release>_sup` with the flags of `[release.supervisor]`,
/// every `[[supervisor]]` under its parent, every process under its
/// supervisor, each registered under its name, in the manifest's order
/// (see relive-releases' manifest doc and relive-upgrader's `tree`).
fn start_release(
    node: &Node,
    manifest: &Manifest,
    view: &ReleaseView,
) -> Result<(Arc<CodeServer>, Pid), String> {
    let code = node.code_server().ok_or("the node has no code server")?;
    for module in &view.modules {
        let loaded = code
            .load(&module.library)
            .map_err(|e| format!("loading module {} ({}): {e}", module.name, module.sha256))?;
        if loaded.name != module.name {
            return Err(format!(
                "module {}'s library ({}) is module {}: rebuild the release",
                module.name, module.sha256, loaded.name
            ));
        }
    }
    // Before any process starts: their `init` may read it.
    let config = if view.config.is_null() { serde_json::json!({}) } else { view.config.clone() };
    let config = relive_runtime::module::json_to_payload(&config).map_err(|e| format!("[config]: {e}"))?;
    node.set_config(config);
    let supervisor = relive_upgrader::tree::start(node, &code, &view.tree)
        .map_err(|e| format!("{e} (release {} {})", manifest.release.name, manifest.release.version))?;
    Ok((code, supervisor))
}
