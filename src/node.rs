//! `relive node start`: a node process that boots a release from the store
//! and takes commands on its control socket (DESIGN.md §6).
//!
//! - The node holds the store open for writing (its flock) for its whole
//!   life, so a second node on the same root is refused.
//! - Booting: `--boot ARCHIVE` unpacks (if needed), installs and makes that
//!   release permanent first; otherwise the store's boot release (the
//!   permanent one) boots. A release that was current but not permanent
//!   when the node died is undone (it becomes old), as OTP does after a
//!   crash. The node loads each module's library from `<root>/code`, starts
//!   the top supervisor `<release>_sup` with one module child per
//!   `[[process]]`, and registers each child under its process name.
//! - The control socket `<root>/control.sock` is created 0600; the peer's
//!   uid is checked on every connection. One JSON request per line, one
//!   JSON response per line (`{"ok": true, ...}` or `{"ok": false,
//!   "error": "..."}`); a request with `"progress": true` also gets
//!   `{"progress": "..."}` lines before its response.
//! - Exit codes: 0 after `stop` (heart does not restart it),
//!   [`EXIT_BOOT_FAILED`] when the node could not start at all (heart gives
//!   up), [`EXIT_SUPERVISOR_DIED`] when the release's top supervisor gave up
//!   (heart restarts it).
//! - Without `--foreground`, `node start` re-executes itself detached with
//!   `--foreground` (output to `<root>/node.log`) and waits until the
//!   socket answers. With `--heart`, the process started is a monitor that
//!   runs the node and starts it again whenever it dies without being
//!   asked to stop.

use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use relive_releases::archive::{self, Contents};
use relive_releases::manifest::{self, Manifest};
use relive_releases::store::{ReleaseInfo, Store, StoreError};
use relive_runtime::supervisor::{self, ChildSpec, Restart, Strategy, SupervisorSpec};
use relive_runtime::{CodeServer, ExitReason, Node, NodeConfig, Pid};
use relive_upgrader::planner::{self, Planned, ReleaseView};
use relive_upgrader::{Controller, Options, UpgradeError};
use serde_json::{Value, json};

use crate::release::{self, RootArg};
use crate::{control, crash};

/// The control socket's name in the root.
pub const SOCKET: &str = "control.sock";
/// The log of a daemonized node (and its heart), in the root.
pub const LOG: &str = "node.log";
/// Exit code of a node that could not start (bad archive, no release,
/// store in use): heart does not try again.
pub const EXIT_BOOT_FAILED: i32 = 3;
/// Exit code of a node whose release's top supervisor gave up: heart
/// restarts it.
pub const EXIT_SUPERVISOR_DIED: i32 = 2;
/// How long a request to a process or a supervisor may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a daemonized start waits for the socket to answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Args)]
pub struct StartArgs {
    #[command(flatten)]
    root: RootArg,
    /// Unpack (if needed), install and make permanent this release archive,
    /// then boot it (default: boot the store's permanent release).
    #[arg(long)]
    boot: Option<PathBuf>,
    /// Keep a small monitor process that starts the node again when it
    /// dies without being asked to stop (it then boots the permanent
    /// release).
    #[arg(long)]
    heart: bool,
    /// Run in this process instead of detaching (output to stderr rather
    /// than <root>/node.log).
    #[arg(long)]
    foreground: bool,
}

/// `relive node start`.
pub fn start(args: StartArgs) -> anyhow::Result<()> {
    let root = args.root.path();
    let boot = args.boot.map(|b| std::path::absolute(&b).unwrap_or(b));
    if !args.foreground {
        return daemonize(&root, boot.as_deref(), args.heart);
    }
    if args.heart {
        return heart(&root, boot.as_deref());
    }
    let result = run(&root, boot.as_deref());
    if let Err(error) = &result {
        // The node never served: not something a restart fixes.
        eprintln!("relive: {error:#}");
        std::process::exit(EXIT_BOOT_FAILED);
    }
    result
}

// ------------------------------------------------------------ daemon, heart

/// The `node start` arguments of a foreground child.
fn child_command(root: &Path, boot: Option<&Path>, heart: bool) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("finding the relive executable to start the node")?;
    let mut command = Command::new(exe);
    command.args(["node", "start", "--foreground", "--root"]).arg(root);
    if let Some(boot) = boot {
        command.arg("--boot").arg(boot);
    }
    if heart {
        command.arg("--heart");
    }
    Ok(command)
}

/// The error for starting a node where one answers already.
fn already_running(root: &Path) -> Option<anyhow::Error> {
    let status = control::request(root, &json!({"cmd": "status"}), |_| {}).ok()?;
    Some(anyhow::anyhow!(
        "a node is already running on {} (pid {}): stop it first with `relive node stop --root {}`, \
         or pass another --root",
        root.display(),
        status["pid"],
        root.display()
    ))
}

/// Starts the node (or its heart) detached, waits until the control socket
/// answers, prints its pid.
fn daemonize(root: &Path, boot: Option<&Path>, heart: bool) -> anyhow::Result<()> {
    if let Some(running) = already_running(root) {
        return Err(running);
    }
    fs::create_dir_all(root).with_context(|| format!("creating the node's root {}", root.display()))?;
    let log_path = root.join(LOG);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening the node's log {}", log_path.display()))?;
    let offset = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut command = child_command(root, boot, heart)?;
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("opening the node's log")?)
        .stderr(log)
        .current_dir(root)
        // Its own process group: a Ctrl-C meant for this command does not
        // reach the node.
        .process_group(0);
    let mut child = command.spawn().context("starting the node process")?;
    let pid = child.id();
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!("starting the node on {}", root.display()));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let started = Instant::now();
    let failed = |why: String| {
        spinner.finish_and_clear();
        anyhow::anyhow!(
            "the node did not start: {why}; its log {} says:\n{}",
            log_path.display(),
            tail(&log_path, offset)
        )
    };
    loop {
        if let Some(status) = child.try_wait().context("waiting for the node process")? {
            return Err(failed(format!("it exited ({status})")));
        }
        if let Ok(status) = control::request(root, &json!({"cmd": "status"}), |_| {}) {
            let answered =
                [&status["pid"], &status["parent_pid"]].iter().any(|p| p.as_u64() == Some(pid.into()));
            if answered {
                spinner.finish_and_clear();
                let release = &status["release"];
                let node_pid = &status["pid"];
                if heart {
                    println!(
                        "node started (pid {node_pid}, heart pid {pid}) on {}: {} {}",
                        root.display(),
                        release["name"].as_str().unwrap_or("?"),
                        release["version"].as_str().unwrap_or("?")
                    );
                } else {
                    println!(
                        "node started (pid {node_pid}) on {}: {} {}",
                        root.display(),
                        release["name"].as_str().unwrap_or("?"),
                        release["version"].as_str().unwrap_or("?")
                    );
                }
                return Ok(());
            }
        }
        if started.elapsed() > START_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(failed(format!("its control socket did not answer within {START_TIMEOUT:?}")));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The last lines of the log written since `offset`.
fn tail(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(path) {
        let _ = file.seek(SeekFrom::Start(offset));
        let _ = file.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(30);
    let shown = lines[start..].join("\n");
    if shown.trim().is_empty() { "(nothing)".to_string() } else { shown }
}

/// The heart: runs the node in the foreground and starts it again when it
/// dies without having been asked to stop.
fn heart(root: &Path, boot: Option<&Path>) -> anyhow::Result<()> {
    /// More deaths than this within [`WINDOW`] and heart gives up.
    const MAX_RESTARTS: usize = 5;
    const WINDOW: Duration = Duration::from_secs(60);
    let mut boot = boot.map(Path::to_path_buf);
    let mut deaths: VecDeque<Instant> = VecDeque::new();
    eprintln!("heart: pid {}, watching the node on {}", std::process::id(), root.display());
    loop {
        let mut command = child_command(root, boot.as_deref(), false)?;
        command.stdin(Stdio::null());
        let mut child = command.spawn().context("heart: starting the node")?;
        eprintln!("heart: node started (pid {})", child.id());
        let status = child.wait().context("heart: waiting for the node")?;
        // Only the first start installs the archive; a restart boots the
        // permanent release.
        boot = None;
        match status.code() {
            Some(0) => {
                eprintln!("heart: the node stopped on request; heart exits");
                return Ok(());
            }
            Some(EXIT_BOOT_FAILED) => {
                eprintln!("heart: the node could not start ({status}); heart gives up");
                std::process::exit(EXIT_BOOT_FAILED);
            }
            _ => {}
        }
        let now = Instant::now();
        deaths.push_back(now);
        while deaths.front().is_some_and(|t| now.duration_since(*t) > WINDOW) {
            deaths.pop_front();
        }
        if deaths.len() > MAX_RESTARTS {
            bail!(
                "heart: the node died {} times within {WINDOW:?} (last: {status}); heart gives up",
                deaths.len()
            );
        }
        eprintln!("heart: the node died ({status}); starting it again on the permanent release");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ------------------------------------------------------------------- boot

/// The release the node runs.
#[derive(Clone)]
struct Running {
    name: String,
    version: semver::Version,
    view: ReleaseView,
}

impl Running {
    fn label(&self) -> String {
        format!("{} {}", self.name, self.version)
    }
}

/// The planner's view of a release in the store.
fn stored_view(
    store: &Store,
    name: &str,
    version: &semver::Version,
) -> anyhow::Result<(Manifest, ReleaseView)> {
    let stored = store.release(name, version)?;
    let manifest =
        Manifest::parse(&stored.manifest_text, &stored.dir.join(relive_releases::store::MANIFEST_FILE))?;
    let view = release::view(&manifest, |module| {
        stored.modules.get(module).map(|sha| (sha.clone(), store.library_path(sha)))
    })?;
    Ok((manifest, view))
}

/// Reads and verifies an archive (with the store's trusted keys, if any).
fn read_archive(root: &Path, path: &Path) -> anyhow::Result<Contents> {
    let trusted = release::trusted_keys(root)?;
    let trusted = (!trusted.is_empty()).then_some(trusted.as_slice());
    Ok(archive::read(path, trusted, false)?)
}

/// Adds the archive's release to the store unless it is there; one that is
/// there must have the same libraries.
fn ensure_unpacked(store: &mut Store, contents: &Contents) -> anyhow::Result<()> {
    let release = &contents.manifest.release;
    if store.get(&release.name, &release.version).is_some() {
        let stored = store.release(&release.name, &release.version)?;
        let same = contents.libraries.len() == stored.modules.len()
            && contents.libraries.iter().all(|l| stored.modules.get(&l.module) == Some(&l.sha256));
        if !same {
            bail!(
                "release {} {} is already in the store {} with other libraries: build it as a new version",
                release.name,
                release.version,
                store.root().display()
            );
        }
        return Ok(());
    }
    let libraries: Vec<(String, String, Vec<u8>)> =
        contents.libraries.iter().map(|l| (l.module.clone(), l.sha256.clone(), l.bytes.clone())).collect();
    store.add_unpacked(&release.name, &release.version, &contents.manifest_text, &libraries)?;
    Ok(())
}

fn restart_of(restart: manifest::Restart) -> Restart {
    match restart {
        manifest::Restart::Permanent => Restart::Permanent,
        manifest::Restart::Transient => Restart::Transient,
        manifest::Restart::Temporary => Restart::Temporary,
    }
}

/// A started node running a release.
struct Booted {
    node: Node,
    code: Arc<CodeServer>,
    supervisor: Pid,
    running: Running,
}

/// Starts a node on `name version` from the store: loads its libraries,
/// starts its top supervisor, registers its processes.
fn boot(store: &Store, name: &str, version: &semver::Version) -> anyhow::Result<Booted> {
    let (manifest, view) = stored_view(store, name, version)?;
    let node = Node::start(NodeConfig { code_dir: Some(store.code_dir()), ..NodeConfig::default() });
    let started = (|| {
        let code = node.code_server().context("the node has no code server")?;
        for module in &view.modules {
            let loaded = code.load(&module.library).with_context(|| {
                format!("loading module {} from {}", module.name, module.library.display())
            })?;
            if loaded.name != module.name {
                bail!(
                    "{}: the library is module {}, release.toml says {}",
                    module.library.display(),
                    loaded.name,
                    module.name
                );
            }
        }
        // A process with `instances` is N children sharing one encoded init
        // argument.
        let mut children = Vec::with_capacity(manifest.child_count());
        for process in &manifest.processes {
            let init = relive_runtime::module::json_to_payload(&process.args)
                .map_err(|e| anyhow::anyhow!("process {}: args: {e}", process.name))?
                .0;
            for name in process.names() {
                let (module, code, init) = (process.module.clone(), Arc::clone(&code), init.clone());
                // Registered by the supervisor at every start, so a child
                // restarted after a crash answers to its name at once.
                let spec = ChildSpec::worker(name.as_str(), move || {
                    Box::new(code.module_process(&module, init.clone()).expect("the module is loaded"))
                })
                .registered(name.as_str());
                children.push(ChildSpec { restart: restart_of(process.restart), ..spec });
            }
        }
        let sup_name = planner::supervisor_name(name);
        let spec = SupervisorSpec {
            intensity: 5,
            period: Duration::from_secs(10),
            name: Some(sup_name.as_str().into()),
            ..SupervisorSpec::new(Strategy::OneForOne, children)
        };
        let supervisor = supervisor::start(&node, spec)
            .map_err(|e| anyhow::anyhow!("starting the supervisor {sup_name} of {name} {version}: {e}"))?;
        Ok(Booted {
            node: node.clone(),
            code,
            supervisor,
            running: Running { name: name.to_string(), version: version.clone(), view },
        })
    })();
    if started.is_err() {
        node.shutdown();
    }
    started
}

// ------------------------------------------------------------- the node

/// What the control connections share.
struct State {
    root: PathBuf,
    node: Node,
    code: Arc<CodeServer>,
    controller: Controller,
    supervisor: Pid,
    store: Mutex<Store>,
    running: Mutex<Running>,
    /// The release that ran before the last deploy, for `rollback`.
    previous: Mutex<Option<Running>>,
    /// The last upgrade's report (and its text).
    last_report: Mutex<Option<(Value, String)>>,
    /// The change running now (deploy, rollback, make-permanent).
    busy: Mutex<Option<String>>,
    /// Held for the whole of a change; `stop` waits for it.
    change: Mutex<()>,
    stopping: AtomicBool,
    started: Instant,
    uid: u32,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Marks a change as running until dropped.
struct Busy<'a> {
    state: &'a State,
    _change: MutexGuard<'a, ()>,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        *lock(&self.state.busy) = None;
    }
}

impl State {
    /// Starts a change, or refuses while another runs or the node stops.
    fn begin(&self, what: String) -> Result<Busy<'_>, Refusal> {
        let mut busy = lock(&self.busy);
        if self.stopping.load(Ordering::SeqCst) {
            return Err(Refusal::new("the node is stopping"));
        }
        if let Some(other) = busy.as_ref() {
            return Err(Refusal::new(format!(
                "{other} is running: wait for it to finish and try again (changes never interleave)"
            )));
        }
        *busy = Some(what);
        drop(busy);
        Ok(Busy { state: self, _change: lock(&self.change) })
    }

    fn running(&self) -> Running {
        lock(&self.running).clone()
    }

    /// The pid of the process registered as `name` (the supervisor
    /// registers every release process under its name at each start).
    fn resolve(&self, name: &str) -> Result<Pid, Refusal> {
        self.node.whereis(name).ok_or_else(|| {
            // A release may run thousands (`instances`): name a few.
            const SHOWN: usize = 8;
            let processes = self.running().view.processes;
            let mut names: Vec<&str> = processes.iter().take(SHOWN).map(|p| p.name.as_str()).collect();
            let more = processes.len().saturating_sub(SHOWN);
            let more = if more > 0 { format!(" … and {more} more") } else { String::new() };
            if names.is_empty() {
                names.push("none");
            }
            Refusal::new(format!(
                "no process named {name:?} runs on this node (the release's processes: {}{more}; \
                 `relive status` lists them with their pids)",
                names.join(", ")
            ))
        })
    }
}

/// A refused or failed request: its error text and any details (a report).
struct Refusal {
    error: String,
    details: serde_json::Map<String, Value>,
}

impl Refusal {
    fn new(error: impl Into<String>) -> Refusal {
        Refusal { error: error.into(), details: serde_json::Map::new() }
    }

    fn with(mut self, key: &str, value: Value) -> Refusal {
        self.details.insert(key.to_string(), value);
        self
    }
}

impl From<anyhow::Error> for Refusal {
    fn from(error: anyhow::Error) -> Refusal {
        Refusal::new(format!("{error:#}"))
    }
}

/// Runs a node in this process until `stop`.
fn run(root: &Path, boot_archive: Option<&Path>) -> anyhow::Result<()> {
    let mut store = match Store::open(root) {
        Ok(store) => store,
        Err(error @ StoreError::Locked { .. }) => {
            if let Some(running) = already_running(root) {
                return Err(running);
            }
            return Err(error).context("cannot start a node");
        }
        Err(error) => return Err(error).context("cannot start a node"),
    };
    if let Some(path) = boot_archive {
        let contents = read_archive(root, path)?;
        ensure_unpacked(&mut store, &contents)?;
        let release = &contents.manifest.release;
        match store.install(&release.name, &release.version) {
            Ok(()) | Err(StoreError::AlreadyInstalled { .. }) => {}
            Err(error) => return Err(error.into()),
        }
        store.make_permanent(&release.name, &release.version)?;
        eprintln!(
            "node: {} {} from {} is installed and permanent",
            release.name,
            release.version,
            path.display()
        );
    }
    let info = store.boot_release().with_context(|| {
        format!(
            "the store {} has no release to boot: pass --boot ARCHIVE (a release archive, see `relive release build`)",
            root.display()
        )
    })?;
    let booted = boot(&store, &info.name, &info.version)?;
    // A release installed but not made permanent does not survive a
    // restart (OTP's rule): the permanent one runs again, the other is old.
    if let Some(current) = store.current()
        && current != info
    {
        eprintln!(
            "node: {} {} was current but not permanent; booted the permanent {} {} instead",
            current.name, current.version, info.name, info.version
        );
        if let Err(error) = store.install(&info.name, &info.version) {
            booted.node.shutdown();
            return Err(error).context("recording the permanent release as the one that runs");
        }
    }
    eprintln!(
        "node: pid {}, booted {} {} from {}",
        std::process::id(),
        info.name,
        info.version,
        root.display()
    );

    let controller = Controller::new(&booted.node)?;
    let state = Arc::new(State {
        root: root.to_path_buf(),
        node: booted.node.clone(),
        code: booted.code,
        controller,
        supervisor: booted.supervisor,
        store: Mutex::new(store),
        running: Mutex::new(booted.running),
        previous: Mutex::new(None),
        last_report: Mutex::new(None),
        busy: Mutex::new(None),
        change: Mutex::new(()),
        stopping: AtomicBool::new(false),
        started: Instant::now(),
        uid: rustix::process::getuid().as_raw(),
    });
    let listener = match bind(root) {
        Ok(listener) => listener,
        Err(error) => {
            booted.node.shutdown();
            return Err(error);
        }
    };
    watch_supervisor(&state);
    eprintln!("node: control socket {} (mode 0600)", root.join(SOCKET).display());
    for connection in listener.incoming() {
        match connection {
            Ok(stream) => {
                let state = Arc::clone(&state);
                let spawned = std::thread::Builder::new()
                    .name("relive-control".into())
                    .spawn(move || serve(&state, stream));
                if let Err(error) = spawned {
                    eprintln!("node: could not start a thread for a control connection: {error}");
                }
            }
            Err(error) => {
                eprintln!("node: accepting a control connection failed: {error}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    Ok(())
}

/// Binds the control socket, 0600, replacing a stale socket file only if
/// no node answers on it.
fn bind(root: &Path) -> anyhow::Result<UnixListener> {
    let path = root.join(SOCKET);
    if fs::symlink_metadata(&path).is_ok() {
        if UnixStream::connect(&path).is_ok() {
            bail!("something answers on {}: another node runs on this root; stop it first", path.display());
        }
        fs::remove_file(&path)
            .with_context(|| format!("removing the stale control socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("creating the control socket {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making the control socket {} private (0600)", path.display()))?;
    Ok(listener)
}

/// If the release's top supervisor gives up, the node exits so that heart
/// (if any) starts it again.
fn watch_supervisor(state: &Arc<State>) {
    let state = Arc::clone(state);
    let _ = std::thread::Builder::new().name("relive-sup-watch".into()).spawn(move || {
        let waiter = state.node.exit_waiter(state.supervisor);
        let Some(reason) = waiter.wait(Duration::from_secs(10 * 365 * 24 * 3600)) else { return };
        if state.stopping.load(Ordering::SeqCst) {
            return;
        }
        eprintln!(
            "node: the top supervisor of {} exited ({reason}); the node exits (heart, if any, starts it again)",
            state.running().label()
        );
        let _ = fs::remove_file(state.root.join(SOCKET));
        std::process::exit(EXIT_SUPERVISOR_DIED);
    });
}

fn write_line(stream: &mut UnixStream, value: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_string(value).expect("JSON values serialize");
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    stream.flush()
}

/// One control connection: checks the peer, then answers requests until
/// it closes.
fn serve(state: &State, mut stream: UnixStream) {
    match rustix::net::sockopt::socket_peercred(&stream) {
        Ok(peer) if peer.uid.as_raw() == state.uid => {}
        Ok(peer) => {
            eprintln!(
                "node: refused a control connection from uid {} (pid {:?})",
                peer.uid.as_raw(),
                peer.pid
            );
            let _ = write_line(
                &mut stream,
                &json!({"ok": false, "error": format!(
                    "refused: the node runs as uid {}, this connection comes from uid {}; run the command as the node's user",
                    state.uid, peer.uid.as_raw()
                )}),
            );
            return;
        }
        Err(error) => {
            let _ = write_line(
                &mut stream,
                &json!({"ok": false, "error": format!("refused: the peer's credentials are unknown ({error})")}),
            );
            return;
        }
    }
    let Ok(reader) = stream.try_clone() else { return };
    for line in BufReader::new(reader).lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let request: Value = match serde_json::from_str(&line) {
            Ok(request) => request,
            Err(error) => {
                let _ = write_line(
                    &mut stream,
                    &json!({"ok": false, "error": format!("the request is not JSON: {error}")}),
                );
                continue;
            }
        };
        let wants_progress = request["progress"].as_bool() == Some(true);
        let mut progress_stream = stream.try_clone().ok().filter(|_| wants_progress);
        let mut progress = |text: &str| {
            if let Some(stream) = progress_stream.as_mut() {
                let _ = write_line(stream, &json!({"progress": text}));
            }
        };
        let cmd = request["cmd"].as_str().unwrap_or_default().to_string();
        let response = match handle(state, &cmd, &request, &mut progress) {
            Ok(Value::Object(mut map)) => {
                map.insert("ok".into(), Value::Bool(true));
                Value::Object(map)
            }
            Ok(other) => json!({"ok": true, "result": other}),
            Err(refusal) => {
                let mut map = refusal.details;
                map.insert("ok".into(), Value::Bool(false));
                map.insert("error".into(), Value::String(refusal.error));
                Value::Object(map)
            }
        };
        let written = write_line(&mut stream, &response);
        if cmd == "stop" && response["ok"] == Value::Bool(true) {
            eprintln!("node: stopped on request");
            std::process::exit(0);
        }
        if written.is_err() {
            return;
        }
    }
}

fn handle(
    state: &State,
    cmd: &str,
    request: &Value,
    progress: &mut dyn FnMut(&str),
) -> Result<Value, Refusal> {
    match cmd {
        "status" => Ok(status(state)),
        "releases" => Ok(json!({"releases": lock(&state.store).which_releases()})),
        "deploy" => deploy(state, request, progress),
        "rollback" => rollback(state, request, progress),
        "make_permanent" => make_permanent(state),
        "plan" => plan(state, request),
        "call" => {
            let pid = state.resolve(str_field(request, "name")?)?;
            let reply = state.node.call_json(pid, &request["json"], CALL_TIMEOUT).map_err(|e| {
                Refusal::new(format!("call to {}: {e}", request["name"].as_str().unwrap_or("")))
            })?;
            Ok(json!({"reply": reply}))
        }
        "cast" => {
            let pid = state.resolve(str_field(request, "name")?)?;
            state.node.cast_json(pid, &request["json"]).map_err(|e| {
                Refusal::new(format!("cast to {}: {e}", request["name"].as_str().unwrap_or("")))
            })?;
            Ok(json!({}))
        }
        "stop" => stop(state),
        "" => Err(Refusal::new("the request has no \"cmd\"")),
        other => Err(Refusal::new(format!(
            "unknown command {other:?}: one of status, releases, deploy, rollback, make_permanent, plan, call, cast, stop"
        ))),
    }
}

fn str_field<'a>(request: &'a Value, field: &str) -> Result<&'a str, Refusal> {
    request[field].as_str().ok_or_else(|| Refusal::new(format!("the request needs a string field {field:?}")))
}

fn release_json(info: &ReleaseInfo) -> Value {
    json!({"name": info.name, "version": info.version.to_string(), "state": info.state.to_string()})
}

fn status(state: &State) -> Value {
    let running = state.running();
    let release_state = lock(&state.store)
        .get(&running.name, &running.version)
        .map(|info| info.state.to_string())
        .unwrap_or_else(|| "unknown".into());
    let modules: Vec<Value> = state
        .code
        .which_modules()
        .into_iter()
        .map(|m| {
            let version = |v: &Option<relive_runtime::VersionInfo>| {
                v.as_ref().map(|v| {
                    json!({"version": v.version.to_string(), "sha256": v.sha256, "processes": v.processes})
                })
            };
            json!({"name": m.name, "current": version(&m.current), "old": version(&m.old)})
        })
        .collect();
    let sup = planner::supervisor_name(&running.name);
    let processes: Vec<Value> = supervisor::which_children(&state.node, sup.as_str(), CALL_TIMEOUT)
        .map(|children| {
            children
                .into_iter()
                .map(|c| json!({"name": c.id.as_ref(), "pid": c.pid.map(|p| p.to_string()), "restarting": c.restarting}))
                .collect()
        })
        .unwrap_or_default();
    let (last_report, last_report_text) = match lock(&state.last_report).as_ref() {
        Some((report, text)) => (report.clone(), Value::String(text.clone())),
        None => (Value::Null, Value::Null),
    };
    json!({
        "pid": std::process::id(),
        "parent_pid": rustix::process::getppid().map(|p| p.as_raw_nonzero().get()),
        "root": state.root,
        "uptime_ms": state.started.elapsed().as_millis() as u64,
        "release": {"name": running.name, "version": running.version.to_string(), "state": release_state},
        "supervisor": sup,
        "modules": modules,
        "processes": processes,
        "busy": lock(&state.busy).clone(),
        "previous": lock(&state.previous).as_ref().map(|p| json!({"name": p.name, "version": p.version.to_string()})),
        "last_report": last_report,
        "last_report_text": last_report_text,
    })
}

/// Reads the archive and plans the way to it from the running release.
/// Refuses another application, the running release itself, and a
/// release only a restart reaches.
/// A release a deploy goes to: from an archive (unpacked into the store on
/// the way), or already in the store (`rollback --to`).
enum Target {
    Archive(Box<Contents>),
    Stored(Box<(Manifest, ReleaseView)>),
}

impl Target {
    fn from_archive(state: &State, archive_path: &Path) -> Result<Target, Refusal> {
        Ok(Target::Archive(Box::new(read_archive(&state.root, archive_path)?)))
    }

    fn from_store(state: &State, version: &semver::Version) -> Result<Target, Refusal> {
        let running = state.running();
        let store = lock(&state.store);
        let (manifest, view) = stored_view(&store, &running.name, version)?;
        Ok(Target::Stored(Box::new((manifest, view))))
    }

    fn release(&self) -> &manifest::Release {
        match self {
            Target::Archive(contents) => &contents.manifest.release,
            Target::Stored(stored) => &stored.0.release,
        }
    }

    fn label(&self) -> String {
        format!("{} {}", self.release().name, self.release().version)
    }

    fn view(&self, state: &State) -> Result<ReleaseView, Refusal> {
        match self {
            Target::Archive(contents) => release_view_of(state, contents),
            Target::Stored(stored) => Ok(stored.1.clone()),
        }
    }
}

/// The plan from the running release to `target`, or why there is none.
fn plan_to(state: &State, target: &Target) -> Result<(relive_upgrader::plan::Plan, bool), Refusal> {
    let running = state.running();
    let new = target.release();
    let label = target.label();
    if new.name != running.name {
        let origin = match target {
            Target::Archive(_) => "the archive's release",
            Target::Stored(_) => "the stored release",
        };
        return Err(Refusal::new(format!(
            "{origin} {label} is another application; this node runs {}: deploy a release of {} (the node keeps running {})",
            running.label(),
            running.name,
            running.label()
        )));
    }
    if new.version == running.version {
        return Err(Refusal::new(format!("{label} already runs on this node: nothing to deploy")));
    }
    let to_view = target.view(state)?;
    match planner::plan(&running.view, &to_view).map_err(|e| Refusal::new(e.to_string()))? {
        Planned::Upgrade { plan, explicit } => Ok((plan, explicit)),
        Planned::Restart { reason } => Err(Refusal::new(format!(
            "{label} cannot be deployed live: {reason}; the node keeps running {}",
            running.label()
        ))),
    }
}

fn plan(state: &State, request: &Value) -> Result<Value, Refusal> {
    let path = PathBuf::from(str_field(request, "archive")?);
    let target = Target::from_archive(state, &path)?;
    let running = state.running();
    let planned =
        planner::plan(&running.view, &target.view(state)?).map_err(|e| Refusal::new(e.to_string()))?;
    let text = match &planned {
        Planned::Upgrade { plan, .. } => plan.to_string(),
        Planned::Restart { reason } => format!("restart: {reason}\n"),
    };
    Ok(json!({"planned": planned, "plan_text": text}))
}

fn deploy(state: &State, request: &Value, progress: &mut dyn FnMut(&str)) -> Result<Value, Refusal> {
    let path = PathBuf::from(str_field(request, "archive")?);
    let _busy = state.begin(format!("a deploy of {}", path.display()))?;
    progress("verifying the archive and planning");
    let target = Target::from_archive(state, &path)?;
    deploy_to(state, target, request, progress)
}

/// Plans and applies a deploy to `target` (the caller holds the busy mark).
fn deploy_to(
    state: &State,
    target: Target,
    request: &Value,
    progress: &mut dyn FnMut(&str),
) -> Result<Value, Refusal> {
    let permanent = request["permanent"].as_bool().unwrap_or(false);
    let dry_run = request["dry_run"].as_bool().unwrap_or(false);
    let health_window = Duration::from_millis(request["health_window_ms"].as_u64().unwrap_or(0));
    let (plan, _explicit) = plan_to(state, &target)?;
    let running = state.running();
    let new = target.release().clone();
    let label = target.label();
    let crash = crash::armed();
    let crash_at = |point: &str| {
        if let Some(armed) = &crash {
            armed.at(point);
        }
    };
    if let Target::Archive(contents) = &target {
        progress(&format!("unpacking {label} into the store"));
        let mut store = lock(&state.store);
        ensure_unpacked(&mut store, contents)?;
    }
    crash_at("unpacked");
    let on_phase = crash.as_ref().map(crash::Armed::hook);
    let options = Options { health_window, on_phase, ..Options::default() };
    if dry_run {
        progress(&format!("dry run of {}: migrating copies of every state", plan.name));
        let report = state.controller.dry_run(&plan, &options).map_err(|e| Refusal::new(e.to_string()))?;
        let mut text = format!("dry run of {}: {} processes checked", plan.name, report.checked);
        for error in &report.load_errors {
            text.push_str(&format!("\n  load error: {error}"));
        }
        for failure in &report.failures {
            text.push_str(&format!("\n  {} ({}): {}", failure.pid, failure.module, failure.error));
        }
        let details = json!({"dry_run": report, "report_text": text, "plan_text": plan.to_string()});
        if report.ok() {
            let Value::Object(map) = details else { unreachable!() };
            return Ok(Value::Object(map));
        }
        let Value::Object(map) = details else { unreachable!() };
        return Err(Refusal {
            error: format!("the dry run of {label} found problems; nothing was changed"),
            details: map,
        });
    }
    progress(&if health_window.is_zero() {
        format!("applying {} ({} instructions)", plan.name, plan.instructions.len())
    } else {
        format!(
            "applying {} ({} instructions), then watching a {health_window:?} health window",
            plan.name,
            plan.instructions.len()
        )
    });
    eprintln!("node: deploying {label} over {}", running.label());
    match state.controller.apply(&plan, &options) {
        Ok(report) => {
            let report_json = serde_json::to_value(&report).unwrap_or(Value::Null);
            let report_text = report.to_string();
            *lock(&state.last_report) = Some((report_json.clone(), report_text.clone()));
            progress("recording the release as current in the store");
            let mut store = lock(&state.store);
            if let Err(error) = store.install(&new.name, &new.version) {
                drop(store);
                let undo = state.controller.rollback(&Options::default());
                let undone = match &undo {
                    Ok(_) => format!("the upgrade was rolled back; the node runs {}", running.label()),
                    Err(e) => format!("rolling the upgrade back failed too ({e}); the node runs {label}"),
                };
                if undo.is_err() {
                    *lock(&state.previous) = Some(running.clone());
                    *lock(&state.running) = Running {
                        name: new.name.clone(),
                        version: new.version.clone(),
                        view: target.view(state)?,
                    };
                }
                return Err(Refusal::new(format!(
                    "{label} was applied but the store could not record it: {error}; {undone}"
                )));
            }
            crash_at("installed");
            let mut permanent_error = None;
            if permanent && let Err(error) = store.make_permanent(&new.name, &new.version) {
                permanent_error = Some(error.to_string());
            }
            let info = store.get(&new.name, &new.version);
            drop(store);
            *lock(&state.previous) = Some(running.clone());
            *lock(&state.running) =
                Running { name: new.name.clone(), version: new.version.clone(), view: target.view(state)? };
            eprintln!("node: {label} deployed");
            if let Some(error) = permanent_error {
                return Err(Refusal::new(format!(
                    "{label} runs now, but making it permanent failed: {error}"
                ))
                .with("report", report_json)
                .with("report_text", Value::String(report_text)));
            }
            Ok(json!({
                "release": info.as_ref().map(release_json),
                "previous": running.label(),
                "report": report_json,
                "report_text": report_text,
            }))
        }
        Err(error) => {
            eprintln!("node: deploying {label} failed: {error}");
            let mut refusal =
                Refusal::new(format!("deploying {label}: {error}; the node still runs {}", running.label()));
            if let Some(report) = error.report() {
                let report_json = serde_json::to_value(report).unwrap_or(Value::Null);
                let report_text = report.to_string();
                *lock(&state.last_report) = Some((report_json.clone(), report_text.clone()));
                refusal = refusal.with("report", report_json).with("report_text", Value::String(report_text));
            }
            Err(refusal)
        }
    }
}

/// The view of an archive's release with its libraries in the store.
fn release_view_of(state: &State, contents: &Contents) -> Result<ReleaseView, Refusal> {
    let store = lock(&state.store);
    Ok(release::view(&contents.manifest, |module| {
        contents.library(module).map(|l| (l.sha256.clone(), store.library_path(&l.sha256)))
    })?)
}

fn rollback(state: &State, request: &Value, progress: &mut dyn FnMut(&str)) -> Result<Value, Refusal> {
    let _busy = state.begin("a rollback".into())?;
    let running = state.running();
    if let Some(to) = request["to"].as_str() {
        let version: semver::Version = to
            .parse()
            .map_err(|e| Refusal::new(format!("rollback --to {to}: not a semver version ({e})")))?;
        let previous = lock(&state.previous).clone();
        if previous.as_ref().is_none_or(|p| p.version != version) {
            // Not the last deploy's: go there like a deploy of the stored
            // release (live when the newer of the two upgrades from the
            // older one).
            progress(&format!("planning {} → {version} from the store", running.label()));
            let target = Target::from_store(state, &version)?;
            let mut response = deploy_to(state, target, request, progress)?;
            response["from"] = Value::String(running.label());
            return Ok(response);
        }
    }
    let Some(previous) = lock(&state.previous).clone() else {
        return Err(Refusal::new(format!(
            "nothing to roll back: no deploy has been applied since the node started (it runs {})",
            running.label()
        )));
    };
    eprintln!("node: rolling back {} to {}", running.label(), previous.label());
    let report = match state.controller.rollback(&Options::default()) {
        Ok(report) => report,
        Err(UpgradeError::NothingToRollBack) => {
            return Err(Refusal::new(format!("nothing to roll back (the node runs {})", running.label())));
        }
        Err(error) => {
            let mut refusal = Refusal::new(format!(
                "rolling back to {}: {error}; the node still runs {}",
                previous.label(),
                running.label()
            ));
            if let Some(report) = error.report() {
                refusal = refusal
                    .with("report", serde_json::to_value(report).unwrap_or(Value::Null))
                    .with("report_text", Value::String(report.to_string()));
            }
            return Err(refusal);
        }
    };
    let report_json = serde_json::to_value(&report).unwrap_or(Value::Null);
    let report_text = report.to_string();
    *lock(&state.last_report) = Some((report_json.clone(), report_text.clone()));
    *lock(&state.running) = previous.clone();
    *lock(&state.previous) = None;
    let mut store = lock(&state.store);
    if let Err(error) = store.install(&previous.name, &previous.version) {
        return Err(Refusal::new(format!(
            "rolled back live to {}, but the store could not record it: {error}",
            previous.label()
        ))
        .with("report", report_json)
        .with("report_text", Value::String(report_text)));
    }
    let info = store.get(&previous.name, &previous.version);
    eprintln!("node: rolled back to {}", previous.label());
    Ok(json!({
        "release": info.as_ref().map(release_json),
        "from": running.label(),
        "report": report_json,
        "report_text": report_text,
    }))
}

fn make_permanent(state: &State) -> Result<Value, Refusal> {
    let _busy = state.begin("make-permanent".into())?;
    let running = state.running();
    let mut store = lock(&state.store);
    let was = store.get(&running.name, &running.version).map(|i| i.state);
    store.make_permanent(&running.name, &running.version).map_err(|e| Refusal::new(e.to_string()))?;
    let info = store.get(&running.name, &running.version);
    let already = was == Some(relive_releases::store::ReleaseState::Permanent);
    if !already {
        eprintln!("node: {} is permanent", running.label());
    }
    Ok(json!({"release": info.as_ref().map(release_json), "already": already}))
}

/// Graceful stop: refuses new changes, waits for one running, removes the
/// socket, stops the release's processes and the node. The caller answers
/// and exits.
fn stop(state: &State) -> Result<Value, Refusal> {
    eprintln!("node: stopping on request");
    state.stopping.store(true, Ordering::SeqCst);
    let _change = lock(&state.change);
    let _ = fs::remove_file(state.root.join(SOCKET));
    let waiter = state.node.exit_waiter(state.supervisor);
    state.node.exit(state.supervisor, ExitReason::Shutdown);
    if waiter.wait(Duration::from_secs(15)).is_none() {
        eprintln!("node: the supervisor did not stop within 15 s; shutting the node down anyway");
    }
    state.node.shutdown();
    Ok(json!({"stopped": std::process::id()}))
}
