//! Shared by the tests that drive the `relive` binary: running it,
//! building the example releases (module crates into target/examples, as
//! every test does, so cargo builds each once), and nodes started with
//! `relive node start` that a failed test does not leave running.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn relive(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_relive")).args(args).output().expect("running relive")
}

/// Runs `relive ARGS`, which must succeed; its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = relive(args);
    assert!(
        out.status.success(),
        "relive {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs `relive ARGS`, which must fail with a `relive: ` error; its stderr.
pub fn failure(args: &[&str]) -> String {
    let out = relive(args);
    assert!(!out.status.success(), "relive {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("relive: "), "{err}");
    err
}

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the application at `app` into an archive in `out`.
pub fn build(app: &Path, out: &Path) -> PathBuf {
    let target = repo().join("target").join("examples");
    let printed = ok(&[
        "release",
        "build",
        app.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--target-dir",
        target.to_str().unwrap(),
    ]);
    PathBuf::from(printed.trim())
}

/// The counter application's releases 1.0.0 and 2.0.0 (examples/releases/),
/// built once per test binary into target/release-archives.
pub fn counter_archives() -> &'static (PathBuf, PathBuf) {
    static BUILT: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let out = repo().join("target").join("release-archives");
        let app = |version: &str| repo().join("examples").join("releases").join(format!("counter-{version}"));
        (build(&app("1.0.0"), &out), build(&app("2.0.0"), &out))
    })
}

/// Whether process `pid` runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z' | 'X'))
        }
        Err(_) => false,
    }
}

/// Waits until `done()` holds, failing the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `kill -SIGNAL PID`, whatever it says.
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).output();
}

/// Runs `relive ARGS` on a thread; `None` if it has not returned within
/// `limit` (it is then killed).
pub fn relive_within(args: &[&str], limit: Duration) -> Option<Output> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_relive"));
    command.args(args);
    run_within(command, limit)
}

/// Runs `command` (stdin closed, output captured) on a thread; `None` if it
/// has not returned within `limit` (it is then killed).
fn run_within(mut command: Command, limit: Duration) -> Option<Output> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running relive");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => Some(output.expect("waiting for relive")),
        Err(_) => {
            signal(pid, "KILL");
            None
        }
    }
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child killed and reaped on drop.
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An Erlang world of a test's own: an epmd on a free port (the machine's
/// other nodes are neither seen nor disturbed; nodes find it through
/// `ERL_EPMD_PORT`), and a directory for `HOME` holding a cookie file
/// (0400).
pub struct Epmd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub cookie: String,
    _epmd: Kill,
}

impl Epmd {
    /// `None`, and a line saying so, when epmd is not installed.
    pub fn start() -> Option<Epmd> {
        if Command::new("epmd").arg("-help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            eprintln!("skipped: epmd is not installed (Debian: apt-get install erlang-nox)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let epmd = Command::new("epmd")
            .args(["-port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting epmd");
        let epmd = Kill(epmd);
        wait_until("epmd answers", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let cookie = format!("COOKIE{}X{port}", std::process::id());
        let file = dir.path().join("cookie");
        std::fs::write(&file, &cookie).unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o400)).unwrap();
        Some(Epmd { dir, port, cookie, _epmd: epmd })
    }

    pub fn cookie_file(&self) -> PathBuf {
        self.dir.path().join("cookie")
    }
}

/// Builds the kv release `version` (a directory name under
/// examples/releases/kv-*) for `port`: its manifest is copied into `dir`
/// with the port substituted and the crate paths made absolute, then
/// `relive release build` writes the archive into `dir/archives`.
pub fn kv_archive(version: &str, port: u16, dir: &Path) -> PathBuf {
    let examples = repo().join("examples");
    let source = examples.join("releases").join(format!("kv-{version}")).join("release.toml");
    let text = std::fs::read_to_string(&source).unwrap();
    assert!(text.contains("127.0.0.1:6380"), "{} listens elsewhere", source.display());
    let text = text
        .replace("127.0.0.1:6380", &format!("127.0.0.1:{port}"))
        .replace("crate = \"../../", &format!("crate = \"{}/", examples.display()));
    let app = dir.join(format!("kv-{version}"));
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("release.toml"), text).unwrap();
    build(&app, &dir.join("archives"))
}

/// `(name, version, state)` of every release in the JSON array that
/// `relive ARGS` (`releases --json` or `release list --json`) prints.
pub fn release_rows(args: &[&str]) -> Vec<(String, String, String)> {
    let json: Value = serde_json::from_str(&ok(args)).unwrap_or_else(|e| panic!("relive {args:?} JSON: {e}"));
    json.as_array()
        .expect("an array")
        .iter()
        .map(|r| {
            let field = |k: &str| r[k].as_str().unwrap().to_string();
            (field("name"), field("version"), field("state"))
        })
        .collect()
}

/// A `(name, version, state)` row, as [`release_rows`] returns them.
pub fn rel(name: &str, version: &str, state: &str) -> (String, String, String) {
    (name.into(), version.into(), state.into())
}

/// A node started on a root; dropping it stops the node (and kills what
/// is left of it, heart and restarted nodes included), even when the test
/// failed.
pub struct NodeGuard {
    pub root: PathBuf,
    /// Every pid learnt: the node, its heart, and any node heart restarted
    /// (a test pushes those).
    pub pids: Vec<u32>,
    /// The user the node runs as, if not the test's own: `relive node
    /// stop` on drop runs as that user too.
    uid: Option<u32>,
    /// The binary that started the node (and stops it on drop).
    exe: PathBuf,
}

impl NodeGuard {
    /// `relive node start --root ROOT ARGS...`; records the node's pid (and
    /// heart's) from what it prints.
    pub fn start(root: &Path, args: &[&str]) -> NodeGuard {
        NodeGuard::start_as(root, args, None, Path::new(env!("CARGO_BIN_EXE_relive")))
    }

    /// As [`NodeGuard::start`], with these environment variables set for
    /// the node.
    pub fn start_with_env(root: &Path, args: &[&str], env: &[(&str, &str)]) -> NodeGuard {
        let exe = Path::new(env!("CARGO_BIN_EXE_relive"));
        let mut guard =
            NodeGuard { root: root.to_path_buf(), pids: Vec::new(), uid: None, exe: exe.to_path_buf() };
        let mut command = guard.command(&["node", "start", "--root", root.to_str().unwrap()]);
        command.args(args).envs(env.iter().copied());
        guard.started(command, args);
        guard
    }

    /// As [`NodeGuard::start`], running the binary `exe` as `uid` (if given).
    pub fn start_as(root: &Path, args: &[&str], uid: Option<u32>, exe: &Path) -> NodeGuard {
        let mut guard = NodeGuard { root: root.to_path_buf(), pids: Vec::new(), uid, exe: exe.to_path_buf() };
        let mut command = guard.command(&["node", "start", "--root", root.to_str().unwrap()]);
        command.args(args);
        guard.started(command, args);
        guard
    }

    /// `exe node start ARGS` run in `dir`, as a person in a project's
    /// directory types it: relative paths in ARGS are `dir`'s, and the
    /// node's root is the default `./.relive` (`dir/.relive`).
    pub fn start_in(dir: &Path, args: &[&str], exe: &Path) -> NodeGuard {
        let mut guard =
            NodeGuard { root: dir.join(".relive"), pids: Vec::new(), uid: None, exe: exe.to_path_buf() };
        let mut command = guard.command(&["node", "start"]);
        command.args(args).current_dir(dir).env_remove("RELIVE_ROOT");
        guard.started(command, args);
        guard
    }

    /// Runs `command` (a `node start`) and records the pids it prints.
    fn started(&mut self, mut command: Command, args: &[&str]) {
        let out = command.output().expect("running relive node start");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        // "node started (pid N[, heart pid M]) on ROOT: ..."
        for marker in ["(pid ", "heart pid "] {
            if let Some(rest) = stdout.split(marker).nth(1) {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                self.pids.extend(digits.parse::<u32>().ok());
            }
        }
        assert!(
            out.status.success() && !self.pids.is_empty(),
            "relive node start {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `exe ARGS`, as the node's user (from a directory that user can
    /// enter) when it is not the test's own.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.exe);
        command.args(args);
        if let Some(uid) = self.uid {
            std::os::unix::process::CommandExt::uid(&mut command, uid);
            std::os::unix::process::CommandExt::gid(&mut command, uid);
            command.current_dir(self.exe.parent().unwrap());
        }
        command
    }

    pub fn root(&self) -> &str {
        self.root.to_str().unwrap()
    }

    /// The node's pid (the first one printed).
    pub fn pid(&self) -> u32 {
        self.pids[0]
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&ok(&["status", "--root", self.root(), "--json"])).expect("status JSON")
    }

    pub fn call(&self, name: &str, json: &str) -> Value {
        serde_json::from_str(ok(&["call", "--root", self.root(), name, json]).trim()).expect("a JSON reply")
    }

    /// `(name, version, state)` of every release, as `relive releases` (the
    /// node) lists them.
    pub fn releases(&self) -> Vec<(String, String, String)> {
        release_rows(&["releases", "--root", self.root(), "--json"])
    }

    /// `relive node stop` (which must succeed), then waits until every pid
    /// is gone.
    pub fn stop(&self) {
        let args = ["node", "stop", "--root", self.root()];
        let out = self.command(&args).output().expect("running relive node stop");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "relive {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("node stopped"), "{stdout}");
        wait_until("the node exits", Duration::from_secs(20), || self.pids.iter().all(|&p| !alive(p)));
    }
}

impl Drop for NodeGuard {
    fn drop(&mut self) {
        // A stopped node (SIGSTOP) would keep `node stop` waiting.
        for &pid in &self.pids {
            if alive(pid) {
                signal(pid, "CONT");
            }
        }
        let _ = run_within(self.command(&["node", "stop", "--root", self.root()]), Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for &pid in &self.pids {
            if alive(pid) {
                signal(pid, "9");
            }
        }
    }
}

/// Copies the relive binary under test to `to`, for a test that runs it
/// from elsewhere. `cp` writes the copy, not this process: a child that
/// another test thread forks while this process holds the copy open for
/// writing inherits that descriptor until it execs, and running the copy
/// meanwhile fails with "Text file busy" (ETXTBSY; it did once in CI).
pub fn install_relive(to: &Path) {
    let status = Command::new("cp").arg(env!("CARGO_BIN_EXE_relive")).arg(to).status().expect("running cp");
    assert!(status.success(), "cp {} {}: {status}", env!("CARGO_BIN_EXE_relive"), to.display());
}

/// Every file and directory of a node's root (its store) with its bytes,
/// leaving out what changes while a node merely runs (its log, socket,
/// run/ and lock): two equal trees mean the store is byte-identical.
pub type Tree = std::collections::BTreeMap<String, Vec<u8>>;

/// The [`Tree`] of the store at `root`.
#[allow(dead_code)]
pub fn store_tree(root: &Path) -> Tree {
    fn walk(base: &Path, dir: &Path, top: bool, tree: &mut Tree) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if top && ["node.log", "control.sock", "run", "store.lock"].contains(&name.as_str()) {
                continue;
            }
            let relative = path.strip_prefix(base).unwrap().to_string_lossy().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                tree.insert(format!("{relative}/"), Vec::new());
                walk(base, &path, false, tree);
            } else if meta.is_file() {
                tree.insert(relative, std::fs::read(&path).unwrap());
            } else {
                let link = std::fs::read_link(&path).map(|l| l.display().to_string()).unwrap_or_default();
                tree.insert(relative, format!("<not a file: {:?} {link}>", meta.file_type()).into_bytes());
            }
        }
    }
    let mut tree = Tree::new();
    walk(root, root, true, &mut tree);
    tree
}
