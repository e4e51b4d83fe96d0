//! The code server: at most two versions per module, current and old.
//!
//! Like OTP's code_server, it owns the module table and enforces:
//! - **At most two versions.** Loading a module that already has a current
//!   version makes that one old. A third load fails while any process still
//!   runs the old version; an old version nobody runs is dropped first.
//! - **One library per name and version.** A different library claiming a
//!   loaded module's name and version is refused; a library whose type
//!   layout differs from an earlier one with the same name and version is
//!   refused even after that one was purged ("bump the version").
//! - **Purge.** `soft_purge` removes old code only if no process runs it;
//!   `purge` kills those processes first, logging each one. Either reports
//!   whether the library was really unmapped (glibc keeps a library mapped if
//!   it registered thread-local destructors).
//!
//! Libraries are copied to `<dir>/<sha256>.so` before `dlopen`, because
//! dlopen caches by path. Processes register with their version (see
//! `module.rs`), so who runs what is known without scanning processes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::{CodeError, MigrateError};
use crate::loader::{self, ModuleCode};
use crate::module::ModuleProcess;
use crate::node::{Node, NodeInner};
use crate::pid::{ExitReason, Pid};

/// How long a purge waits for each killed process to be gone.
const PURGE_WAIT: Duration = Duration::from_secs(5);

/// How many of the processes still on old code an error names.
const NAMED_PIDS: usize = 5;

/// The code server of a node. Get it with `Node::code_server`.
pub struct CodeServer {
    dir: PathBuf,
    node: Weak<NodeInner>,
    modules: Mutex<BTreeMap<String, Versions>>,
    /// Every (name, version) ever loaded: its sha256 and type fingerprint.
    seen: Mutex<HashMap<(String, semver::Version), (String, String)>>,
}

#[derive(Default)]
struct Versions {
    current: Option<Arc<ModuleCode>>,
    old: Option<Arc<ModuleCode>>,
}

/// What a load did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The module.
    pub name: String,
    /// Its new current version.
    pub version: semver::Version,
    /// sha256 of the library.
    pub sha256: String,
    /// The version that became old, if any.
    pub previous: Option<semver::Version>,
    /// False if this exact library was already current (nothing changed).
    pub changed: bool,
}

/// One version of a module, as `which_modules` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionInfo {
    /// Its version.
    pub version: semver::Version,
    /// sha256 of its library.
    pub sha256: String,
    /// Processes running it now.
    pub processes: usize,
}

/// A module, as `which_modules` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Its name.
    pub name: String,
    /// Its current version.
    pub current: Option<VersionInfo>,
    /// Its old version.
    pub old: Option<VersionInfo>,
}

/// What a purge did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PurgeReport {
    /// The module.
    pub module: String,
    /// The old version removed, if there was one.
    pub version: Option<semver::Version>,
    /// Processes killed because they ran it.
    pub killed: Vec<Pid>,
    /// Whether its library is gone from the address space (`None` when
    /// nothing was purged, or another holder still keeps it loaded).
    pub unmapped: Option<bool>,
}

fn info(code: &Arc<ModuleCode>) -> VersionInfo {
    VersionInfo {
        version: code.version().clone(),
        sha256: code.sha256().to_string(),
        processes: code.process_count(),
    }
}

/// Whether `path` is still mapped into this process.
fn is_mapped(path: &Path) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let path = path.to_string_lossy();
    maps.lines().any(|line| line.ends_with(path.as_ref()))
}

impl CodeServer {
    pub(crate) fn new(dir: PathBuf, node: Weak<NodeInner>) -> CodeServer {
        CodeServer { dir, node, modules: Mutex::new(BTreeMap::new()), seen: Mutex::new(HashMap::new()) }
    }

    /// Where loaded libraries are kept (`<dir>/<sha256>.so`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads the library at `path` as the current version of its module.
    ///
    /// # Errors
    /// [`CodeError::Load`] for a file that is not a valid module (see
    /// [`crate::LoadError`]); [`CodeError::OldCodeInUse`] when a third version would
    /// be needed; [`CodeError::VersionClash`] and [`CodeError::LayoutChanged`]
    /// for a library that reuses a name and version. Nothing already loaded
    /// changes on error.
    pub fn load(&self, path: &Path) -> Result<Loaded, CodeError> {
        self.install(Arc::new(loader::load_library(&self.dir, path)?))
    }

    /// Makes a library opened with [`CodeServer::open`] the current version
    /// of its module: [`CodeServer::load`] without the file work (reading,
    /// hashing, copying, `dlopen`), so an upgrade can open every library
    /// first and then switch quickly.
    ///
    /// # Errors
    /// As [`CodeServer::load`], but for the file checks, done by `open`.
    pub fn install(&self, code: Arc<ModuleCode>) -> Result<Loaded, CodeError> {
        let path = code.source().to_path_buf();
        let path = path.as_path();
        let key = (code.name().to_string(), code.version().clone());
        let mut modules = self.modules.lock();
        let versions = modules.entry(code.name().to_string()).or_default();
        if let Some(current) = &versions.current
            && current.sha256() == code.sha256()
        {
            return Ok(Loaded {
                name: key.0,
                version: key.1,
                sha256: code.sha256().to_string(),
                previous: None,
                changed: false,
            });
        }
        let mut seen = self.seen.lock();
        if let Some((sha256, fingerprint)) = seen.get(&key) {
            let loaded_now = [&versions.current, &versions.old]
                .into_iter()
                .flatten()
                .any(|v| v.version() == code.version());
            if fingerprint != code.fingerprint() {
                return Err(CodeError::LayoutChanged {
                    path: path.to_path_buf(),
                    module: key.0,
                    version: key.1,
                });
            }
            if loaded_now && sha256 != code.sha256() {
                return Err(CodeError::VersionClash {
                    path: path.to_path_buf(),
                    module: key.0,
                    version: key.1,
                });
            }
        }
        if let Some(old) = &versions.old {
            let running = old.process_count();
            if running > 0 {
                return Err(CodeError::OldCodeInUse {
                    module: key.0,
                    version: old.version().clone(),
                    processes: running,
                    first: old.processes().into_iter().take(NAMED_PIDS).collect(),
                });
            }
        }
        seen.insert(key.clone(), (code.sha256().to_string(), code.fingerprint().to_string()));
        let previous = versions.current.as_ref().map(|c| c.version().clone());
        versions.old = versions.current.take();
        versions.current = Some(code.clone());
        tracing::info!(module = %key.0, version = %key.1, sha256 = code.sha256(), "loaded");
        Ok(Loaded { name: key.0, version: key.1, sha256: code.sha256().to_string(), previous, changed: true })
    }

    /// Opens the library at `path` with every check of [`CodeServer::load`]
    /// on the file, without installing it: nothing changes for the node.
    /// For dry runs, which need the new code's `code_change` but must not
    /// make it current.
    ///
    /// # Errors
    /// [`CodeError::Load`]; [`CodeError::LayoutChanged`] for a layout that
    /// differs from an earlier library with the same name and version.
    pub fn open(&self, path: &Path) -> Result<Arc<ModuleCode>, CodeError> {
        let code = Arc::new(loader::load_library(&self.dir, path)?);
        let key = (code.name().to_string(), code.version().clone());
        if let Some((_, fingerprint)) = self.seen.lock().get(&key)
            && fingerprint != code.fingerprint()
        {
            return Err(CodeError::LayoutChanged { path: path.to_path_buf(), module: key.0, version: key.1 });
        }
        Ok(code)
    }

    /// Undoes a load of `module` at `version`: the version that it made old
    /// is current again (or the module is gone if it had none). An upgrade
    /// that fails or rolls back uses it once no process runs `version`.
    ///
    /// # Errors
    /// [`CodeError::UnknownModule`] if `version` is not current;
    /// [`CodeError::StillRunning`] if processes still run it.
    pub fn unload(&self, module: &str, version: &semver::Version) -> Result<(), CodeError> {
        let mut modules = self.modules.lock();
        let versions = modules.get_mut(module).ok_or_else(|| CodeError::UnknownModule(module.to_string()))?;
        let Some(current) = versions.current.as_ref().filter(|c| c.version() == version) else {
            return Err(CodeError::UnknownModule(format!("{module} {version}")));
        };
        let running = current.process_count();
        if running > 0 {
            return Err(CodeError::StillRunning {
                module: module.to_string(),
                version: version.clone(),
                processes: running,
            });
        }
        versions.current = versions.old.take();
        if versions.current.is_none() {
            modules.remove(module);
        }
        tracing::info!(module, %version, "unloaded");
        Ok(())
    }

    /// Undoes [`CodeServer::delete`]: the old version of `module` is current
    /// again.
    ///
    /// # Errors
    /// [`CodeError::UnknownModule`] if `module` has a current version or no
    /// old one.
    pub fn undelete(&self, module: &str) -> Result<(), CodeError> {
        let mut modules = self.modules.lock();
        match modules.get_mut(module) {
            Some(versions) if versions.current.is_none() && versions.old.is_some() => {
                versions.current = versions.old.take();
                Ok(())
            }
            _ => Err(CodeError::UnknownModule(format!("{module} (deleted)"))),
        }
    }

    /// The current version of `module`.
    pub fn current(&self, module: &str) -> Option<Arc<ModuleCode>> {
        self.modules.lock().get(module).and_then(|v| v.current.clone())
    }

    /// The old version of `module`.
    pub fn old(&self, module: &str) -> Option<Arc<ModuleCode>> {
        self.modules.lock().get(module).and_then(|v| v.old.clone())
    }

    /// Every module with its versions and how many processes run each.
    pub fn which_modules(&self) -> Vec<ModuleInfo> {
        self.modules
            .lock()
            .iter()
            .filter(|(_, v)| v.current.is_some() || v.old.is_some())
            .map(|(name, v)| ModuleInfo {
                name: name.clone(),
                current: v.current.as_ref().map(info),
                old: v.old.as_ref().map(info),
            })
            .collect()
    }

    /// Whether `pid` runs the old version of `module` (OTP's
    /// `check_process_code`).
    pub fn check_process_code(&self, pid: Pid, module: &str) -> bool {
        self.old(module).is_some_and(|old| old.pids.contains(pid))
    }

    /// Makes the current version of `module` old (OTP's `code:delete`): no
    /// new process can start on it; running ones keep running.
    ///
    /// # Errors
    /// [`CodeError::UnknownModule`]; [`CodeError::OldCodeInUse`] if the old
    /// version still runs processes.
    pub fn delete(&self, module: &str) -> Result<(), CodeError> {
        let mut modules = self.modules.lock();
        let versions = modules.get_mut(module).ok_or_else(|| CodeError::UnknownModule(module.to_string()))?;
        let current = versions.current.take().ok_or_else(|| CodeError::UnknownModule(module.to_string()))?;
        if let Some(old) = &versions.old
            && old.process_count() > 0
        {
            let error = CodeError::OldCodeInUse {
                module: module.to_string(),
                version: old.version().clone(),
                processes: old.process_count(),
                first: old.processes().into_iter().take(NAMED_PIDS).collect(),
            };
            versions.current = Some(current);
            return Err(error);
        }
        versions.old = Some(current);
        Ok(())
    }

    /// Removes the old version of `module` if no process runs it; true if
    /// there was one to remove.
    ///
    /// # Errors
    /// [`CodeError::ProcessesOnOldCode`] with the processes still on it.
    pub fn soft_purge(&self, module: &str) -> Result<PurgeReport, CodeError> {
        let old = {
            let mut modules = self.modules.lock();
            let Some(versions) = modules.get_mut(module) else { return Ok(Self::nothing(module)) };
            let Some(old) = &versions.old else { return Ok(Self::nothing(module)) };
            let lingering = old.processes();
            if !lingering.is_empty() {
                return Err(CodeError::ProcessesOnOldCode {
                    module: module.to_string(),
                    version: old.version().clone(),
                    pids: lingering,
                });
            }
            versions.old.take().expect("checked above")
        };
        Ok(Self::release(module, old, Vec::new()))
    }

    /// Removes the old version of `module`, killing every process that runs
    /// it (each is logged with the reason).
    pub fn purge(&self, module: &str) -> PurgeReport {
        let Some(old) = self.modules.lock().get_mut(module).and_then(|v| v.old.take()) else {
            return Self::nothing(module);
        };
        let victims = old.processes();
        if let Some(node) = self.node.upgrade().map(|inner| Node { inner }) {
            let waiters: Vec<_> = victims.iter().map(|pid| (*pid, node.exit_waiter(*pid))).collect();
            for pid in &victims {
                tracing::warn!(%pid, module, version = %old.version(), "purge: killing a process that runs old code");
                node.exit(*pid, ExitReason::Kill);
            }
            for (pid, waiter) in waiters {
                if waiter.wait(PURGE_WAIT).is_none() {
                    tracing::error!(%pid, module, "purge: a killed process did not exit in time");
                }
            }
        }
        Self::release(module, old, victims)
    }

    fn nothing(module: &str) -> PurgeReport {
        PurgeReport { module: module.to_string(), version: None, killed: Vec::new(), unmapped: None }
    }

    /// Drops the code server's hold on a version and reports the result.
    fn release(module: &str, old: Arc<ModuleCode>, killed: Vec<Pid>) -> PurgeReport {
        let version = old.version().clone();
        let path = old.path().to_path_buf();
        let last_holder = Arc::strong_count(&old) == 1;
        drop(old);
        let unmapped = last_holder.then(|| !is_mapped(&path));
        match unmapped {
            Some(false) => tracing::warn!(
                module,
                %version,
                "purged, but the library is still mapped (glibc keeps libraries that registered thread-local destructors)"
            ),
            _ => tracing::info!(module, %version, "purged"),
        }
        PurgeReport { module: module.to_string(), version: Some(version), killed, unmapped }
    }

    /// An actor running the current version of `module`, to spawn (or give
    /// a supervisor as a child). `init_arg` is MessagePack.
    ///
    /// # Errors
    /// [`CodeError::UnknownModule`] if no version is current.
    pub fn module_process(&self, module: &str, init_arg: Vec<u8>) -> Result<ModuleProcess, CodeError> {
        // Under the table's lock, so the new process counts as starting on
        // its version before an `unload` or a purge can look.
        let modules = self.modules.lock();
        let code = modules
            .get(module)
            .and_then(|v| v.current.clone())
            .ok_or_else(|| CodeError::UnknownModule(module.to_string()))?;
        Ok(ModuleProcess::new(code, init_arg))
    }

    /// A supervisor child that runs the current version of `module` each
    /// time it starts (so a restart after an upgrade runs the new code).
    /// `init_arg` is MessagePack. If the module is gone when the child
    /// (re)starts, the start fails, as a failing init would.
    pub fn child_spec(self: &Arc<Self>, id: &str, module: &str, init_arg: Vec<u8>) -> crate::ChildSpec {
        let code = Arc::clone(self);
        let module = module.to_string();
        crate::ChildSpec::worker(id, move || match code.module_process(&module, init_arg.clone()) {
            Ok(process) => Box::new(process),
            Err(error) => panic!("starting a child of module {module}: {error}"),
        })
    }
}

/// A migration computed off to the side: the new state exists, the process
/// still runs its old code with its old state. Commit it with
/// [`CodeServer::commit`]; drop it to abort (the new version frees its
/// state).
pub struct Prepared {
    pid: Pid,
    state: crate::loader::ModuleState,
    from: semver::Version,
}

impl Prepared {
    /// The process.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The version it will run.
    pub fn to(&self) -> &semver::Version {
        self.state.code().version()
    }

    /// The version it runs now.
    pub fn from(&self) -> &semver::Version {
        &self.from
    }
}

// A MigrateError carries the whole story (pid, module, both versions, the
// module's text); it is the rare path, and callers match on its fields.
#[allow(clippy::result_large_err)]
impl CodeServer {
    /// Builds, for suspended process `pid`, its state for version `to`:
    /// the running version exports its state (or, moving to an older
    /// version, `downgrade`s it), and `to`'s `code_change` reads it. Touches
    /// nothing of the process.
    ///
    /// # Errors
    /// [`MigrateError`]: not suspended or not a module process, another
    /// module, or the module refusing (export, downgrade or code_change).
    pub fn prepare(
        &self,
        node: &Node,
        pid: Pid,
        to: &Arc<ModuleCode>,
        extra: &[u8],
    ) -> Result<Prepared, MigrateError> {
        node.with_suspended(pid, |actor| {
            let process = actor.as_module_process().ok_or(MigrateError::NotAModuleProcess(pid))?;
            let running = process.code().clone();
            if running.name() != to.name() {
                return Err(MigrateError::WrongModule {
                    pid,
                    runs: running.name().to_string(),
                    expected: to.name().to_string(),
                });
            }
            let state = process.migrated_state(to, extra).map_err(|error| MigrateError::Migration {
                pid,
                module: to.name().to_string(),
                from: running.version().clone(),
                to: to.version().clone(),
                error,
            })?;
            Ok(Prepared { pid, state, from: running.version().clone() })
        })?
    }

    /// Switches a suspended process to a prepared state; its old state is
    /// freed by the version that made it.
    ///
    /// # Errors
    /// [`MigrateError::Suspend`] if the process is gone or no longer
    /// suspended.
    pub fn commit(&self, node: &Node, prepared: Prepared) -> Result<(), MigrateError> {
        let Prepared { pid, state, .. } = prepared;
        let old_state = node.with_suspended(pid, move |actor| {
            actor.as_module_process().map(|process| process.switch(state))
        })?;
        drop(old_state);
        Ok(())
    }

    /// Moves one process to the current version of its module (or to
    /// `to`): suspend, prepare, commit, resume. On error the process resumes
    /// on its old code with its old state.
    ///
    /// # Errors
    /// As [`CodeServer::prepare`].
    pub fn upgrade_process(
        &self,
        node: &Node,
        pid: Pid,
        to: &Arc<ModuleCode>,
        extra: &[u8],
        timeout: Duration,
    ) -> Result<(), MigrateError> {
        node.suspend(pid, timeout)?;
        let result = self.prepare(node, pid, to, extra).and_then(|prepared| self.commit(node, prepared));
        let _ = node.resume(pid);
        result
    }
}
