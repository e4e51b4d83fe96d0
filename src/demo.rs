//! `relive demo`: the kv application (examples/kv-*) upgraded live under
//! load, in one command that needs nothing installed but Rust.
//!
//! 1. Builds the kv releases 1.0.0, 1.1.0 and 1.2.0-broken from
//!    examples/releases/ into a temporary directory (module crates into
//!    `<repo>/target/examples`): each `release.toml` is copied with its
//!    `crate` paths made absolute and kv's `listen` address replaced by a
//!    free port on 127.0.0.1.
//! 2. Starts a real node (`relive node start --foreground`, a child
//!    process) on a temporary root, booting 1.0.0; it is stopped at the
//!    end whatever happens.
//! 3. Starts its own clients: `--clients` threads, each with one persistent
//!    TCP connection, sending RESP SET then GET of its own key (and INCR
//!    of its own counter while 1.1.0 runs) in a loop and checking every
//!    reply; plus one probe connection for the single checks.
//! 4. Deploys 1.1.0 live through the control socket: no connection may
//!    drop, no request fail, no message be lost; INCR works afterwards.
//! 5. Writes a key 1.2.0-broken's `code_change` refuses, deploys
//!    1.2.0-broken: the upgrade must be refused and undone automatically,
//!    the node still on 1.1.0, the clients unaffected.
//! 6. Rolls back to 1.0.0 live (`rollback`): connections still open.
//! 7. Stops the clients and the node and prints a report.
//!
//! One line per phase on stdout, then the report; what cargo builds is
//! said on stderr. Exit 0 only if every step behaved as expected and
//! nothing was lost, failed or dropped.

use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use relive_node::client::{Client, ClientError};
use relive_node::protocol::{DeployRequest, Failure, Status};
use relive_releases::manifest::Manifest;
use relive_upgrader::{Outcome, Report};
use serde_json::{Value, json};

use crate::control;
use crate::examples::{self, TempDir};
use crate::release;

/// The kv releases the demo builds, in the order it deploys them.
const RELEASES: [&str; 3] = ["1.0.0", "1.1.0", "1.2.0-broken"];
/// What the demo builds from the relive checkout.
const BUILDS: &str = "the kv releases of examples/releases from examples/kv-*";
/// The key prefix 1.2.0-broken's `code_change` refuses.
const BAD_KEY: &str = "bad:demo";
/// How long a client waits for one reply before it counts the connection
/// as dropped.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many problems the report lists (they are all counted).
const MAX_LISTED: usize = 10;

#[derive(Args)]
pub struct DemoArgs {
    /// Client connections that keep sending requests throughout.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    clients: u16,
    /// How long the clients run between two steps (e.g. 1s, 500ms).
    #[arg(long, value_parser = control::parse_duration, default_value = "1s")]
    load: Duration,
}

/// `relive demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    // Before anything is printed: an installed relive has no examples.
    examples::checkout("demo", BUILDS)?;
    let started = Instant::now();
    let clients = usize::from(args.clients);
    let tmp = TempDir::new("demo")?;
    say(&format!(
        "relive demo: kv upgraded live under load ({clients} client connections), on a temporary node in {}",
        tmp.path().display()
    ));

    // 1. build
    let addr = free_addr()?;
    let built = Instant::now();
    let archives = build_releases(tmp.path(), "kv", &RELEASES, &addr)?;
    let build_time = built.elapsed();
    say(&format!(
        "[1/7] build     kv {} built in {:.1} s (kv will listen on {addr})",
        RELEASES.join(", "),
        build_time.as_secs_f64()
    ));

    // 2. boot
    let booted = Instant::now();
    let root = tmp.path().join("root");
    let log = tmp.path().join("node.log");
    let mut node = NodeProcess::start(&root, Some(&archives[0]), &log, None)?;
    let status = node.checked(Client::status)?;
    let boot_time = booted.elapsed();
    let mut demo = Demo::new(clients, addr.clone());
    let running = release_of(&status);
    demo.expect(running == "kv 1.0.0", format!("the node booted {running}, not kv 1.0.0"));
    say(&format!(
        "[2/7] boot      node pid {} on {} runs {running} (booted in {:.0} ms)",
        node.pid,
        root.display(),
        boot_time.as_secs_f64() * 1e3
    ));

    // 3..6, with clients running; whatever happens, the clients and the
    // node are stopped and the report printed.
    let load = Arc::new(Load::new(clients));
    let threads: Vec<JoinHandle<()>> = (0..clients)
        .map(|i| {
            let load = Arc::clone(&load);
            let addr = addr.clone();
            std::thread::Builder::new()
                .name(format!("demo-client-{i}"))
                .spawn(move || client(i, &addr, &load))
                .expect("starting a client thread")
        })
        .collect();
    let driven = demo.drive(&node, &load, &archives, args.load);
    load.stop.store(true, Ordering::SeqCst);
    for thread in threads {
        let _ = thread.join();
    }
    let totals = load.counts();
    let clients_time = load.started.elapsed();
    let stopped = node.stop();
    match &stopped {
        Ok(()) => say(&format!(
            "[7/7] stop      clients closed after {:.1} s; node pid {} stopped",
            clients_time.as_secs_f64(),
            node.pid
        )),
        Err(error) => {
            say(&format!("[7/7] stop      clients closed; stopping the node failed: {error:#}"));
            demo.problem(format!("stopping the node: {error:#}"));
        }
    }
    if let Err(error) = &driven {
        demo.problem(format!("the demo stopped early: {error:#}"));
    }
    demo.finish_clients(&load, &totals);
    demo.report(&totals, clients_time, build_time, boot_time, started.elapsed());
    if !demo.problems.is_empty() {
        if driven.is_err() || stopped.is_err() {
            eprintln!("relive: the node's log ({}) ended with:\n{}", log.display(), tail(&log, 20));
        }
        bail!(
            "the demo failed ({} problem{}): {}",
            demo.problems.len(),
            if demo.problems.len() == 1 { "" } else { "s" },
            demo.problems.first().map(String::as_str).unwrap_or("")
        );
    }
    Ok(())
}

/// One progress line on stdout, at once.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

// -------------------------------------------------------------- building

/// A free port on 127.0.0.1: bound, read, released.
pub(crate) fn free_addr() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    let addr: SocketAddr = listener.local_addr().context("finding a free port on 127.0.0.1")?;
    Ok(addr.to_string())
}

/// Builds `versions` of the example application `app_name` (the demo:
/// [`RELEASES`] of kv) from examples/releases of the relive checkout (see
/// [`build_release`]) into `<tmp>/dist`; returns the archives in order.
pub(crate) fn build_releases(
    tmp: &Path,
    app_name: &str,
    versions: &[&str],
    addr: &str,
) -> anyhow::Result<Vec<PathBuf>> {
    let repo = examples::checkout("demo", BUILDS)?;
    let target = repo.join("target").join("examples");
    versions
        .iter()
        .map(|version| {
            let source = repo.join("examples").join("releases").join(format!("{app_name}-{version}"));
            build_release(tmp, &source, addr, Some(&target))
        })
        .collect()
}

/// Builds the release in `source` (a directory holding release.toml) into
/// `<tmp>/dist` from a copy of its manifest in `<tmp>/apps/<name>-<version>`
/// with the crate paths made absolute and every process argument named
/// `listen` (kv's) set to `addr`; the module crates build into `target`
/// (default: cargo's, for each crate). Says what it builds on stderr.
pub(crate) fn build_release(
    tmp: &Path,
    source: &Path,
    addr: &str,
    target: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    let manifest_path = source.join("release.toml");
    if !manifest_path.is_file() {
        bail!("{} not found: a release is a directory holding release.toml", manifest_path.display());
    }
    let mut manifest = Manifest::from_path(&manifest_path)?;
    let (name, version) = (manifest.release.name.clone(), manifest.release.version.clone());
    let mut crates = Vec::new();
    for module in &mut manifest.modules {
        let dir = source.join(&module.krate);
        module.krate = dir.canonicalize().with_context(|| {
            format!("{}: module {}: crate {} not found", manifest_path.display(), module.name, dir.display())
        })?;
        crates.push(module.krate.display().to_string());
    }
    // An application without a listening process (the swarm) is built as
    // it is.
    for process in &mut manifest.processes {
        if let Some(listen) = process.args.get_mut("listen") {
            *listen = Value::String(addr.to_string());
        }
    }
    let app = tmp.join("apps").join(format!("{name}-{version}"));
    fs::create_dir_all(&app).with_context(|| format!("creating {}", app.display()))?;
    let copy = app.join("release.toml");
    fs::write(&copy, manifest.to_toml_string()?).with_context(|| format!("writing {}", copy.display()))?;
    let dist = tmp.join("dist");
    fs::create_dir_all(&dist).with_context(|| format!("creating {}", dist.display()))?;
    eprintln!(
        "relive: building {name} {version} (cargo build --release: {}{})",
        crates.join(", "),
        target.map(|t| format!("; into {}", t.display())).unwrap_or_default()
    );
    release::build(&app, &dist, None, target)
        .with_context(|| format!("building release {name} {version} ({})", manifest_path.display()))
}

// ------------------------------------------------------------------ node

/// The node, a child process of this one; stopped when dropped.
pub(crate) struct NodeProcess {
    pub(crate) child: Child,
    pub(crate) root: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) pid: u32,
    pub(crate) stopped: bool,
}

impl NodeProcess {
    /// `relive node start --foreground --root ROOT [--boot ARCHIVE]`, output
    /// appended to `log` (a restarted node adds to its first log), with
    /// crash points read from `crash_file` when given (see
    /// `relive_node::crash`);
    /// returns once its control socket answers.
    pub(crate) fn start(
        root: &Path,
        boot: Option<&Path>,
        log: &Path,
        crash_file: Option<&Path>,
    ) -> anyhow::Result<NodeProcess> {
        let exe = std::env::current_exe().context("finding the relive executable to start the node")?;
        let log_file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut command = Command::new(exe);
        command.args(["node", "start", "--foreground", "--root"]).arg(root);
        if let Some(boot) = boot {
            command.arg("--boot").arg(boot);
        }
        if let Some(file) = crash_file {
            command.env(relive_node::crash::ENV, file);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("opening the node's log")?)
            .stderr(log_file)
            .spawn()
            .context("starting the node process")?;
        let pid = child.id();
        let node =
            NodeProcess { child, root: root.to_path_buf(), log: log.to_path_buf(), pid, stopped: false };
        node.wait_until_up()
    }

    pub(crate) fn wait_until_up(mut self) -> anyhow::Result<NodeProcess> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for the node process")? {
                self.stopped = true;
                bail!(
                    "the node exited ({status}) before its control socket answered; its log {} says:\n{}",
                    self.log.display(),
                    tail(&self.log, 30)
                );
            }
            if let Ok(status) = Client::connect(&self.root).and_then(|mut client| client.status())
                && status.pid == self.pid
            {
                return Ok(self);
            }
            if Instant::now() > deadline {
                bail!(
                    "the node's control socket did not answer within 60 s; its log {} says:\n{}",
                    self.log.display(),
                    tail(&self.log, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One request over a connection of its own (`ask` is one of
    /// [`Client`]'s helpers, e.g. `|c| c.deploy(request, None)`): the
    /// answer, or the node's refusal; `Err` only when the node could not be
    /// asked.
    pub(crate) fn ask<T>(
        &self,
        ask: impl FnOnce(&mut Client) -> Result<T, ClientError>,
    ) -> anyhow::Result<Answer<T>> {
        answered(Client::connect(&self.root).and_then(|mut client| ask(&mut client)))
    }

    /// A request whose refusal is an error too (`Client::status`,
    /// `|c| c.call(...)`).
    pub(crate) fn checked<T>(
        &self,
        ask: impl FnOnce(&mut Client) -> Result<T, ClientError>,
    ) -> anyhow::Result<T> {
        Ok(Client::connect(&self.root).and_then(|mut client| ask(&mut client))?)
    }

    /// Stops the node gracefully (`stop`), killing it if it does not exit
    /// within 20 s.
    pub(crate) fn stop(&mut self) -> anyhow::Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let answer = self.checked(Client::stop);
        match self.exit_within(Duration::from_secs(20))? {
            Some(status) if status.success() => answer.map(|_| ()),
            Some(status) => bail!("the node exited with {status} when asked to stop"),
            None => bail!("the node did not stop within 20 s of `stop`; it was killed"),
        }
    }

    /// Waits up to `limit` for the node process to exit: its status, or
    /// `None` after killing it when it was still running.
    pub(crate) fn exit_within(&mut self, limit: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for the node process to exit")? {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.stop();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `lines` lines of a file.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let shown = all[all.len().saturating_sub(lines)..].join("\n");
    if shown.trim().is_empty() { "(nothing)".into() } else { shown }
}

/// What the node answered a request: the response, or its refusal (with
/// the upgrade's report when one ran).
pub(crate) type Answer<T> = Result<T, Box<Failure>>;

/// Splits a client's result into the node's answer (`Ok`, a refusal
/// included) and the errors that got no answer at all (`Err`).
pub(crate) fn answered<T>(result: Result<T, ClientError>) -> anyhow::Result<Answer<T>> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(ClientError::Refused(failure)) => Ok(Err(failure)),
        Err(error) => Err(error.into()),
    }
}

/// "kv 1.1.0" from a status.
pub(crate) fn release_of(status: &Status) -> String {
    format!("{} {}", status.release.name, status.release.version)
}

/// How an upgrade ended, as the report's JSON says it: `committed`,
/// `aborted`, `rolled_back`.
pub(crate) fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Committed => "committed",
        Outcome::Aborted { .. } => "aborted",
        Outcome::RolledBack { .. } => "rolled_back",
    }
}

// ------------------------------------------------------------ RESP client

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(i64),
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Simple(text) => write!(f, "+{text}"),
            Reply::Error(text) => write!(f, "-{text}"),
            Reply::Int(n) => write!(f, ":{n}"),
            Reply::Bulk(None) => write!(f, "(nil)"),
            Reply::Bulk(Some(bytes)) => write!(f, "{:?}", String::from_utf8_lossy(bytes)),
            Reply::Array(n) => write!(f, "an array of {n}"),
        }
    }
}

/// One persistent connection to kv.
pub(crate) struct Resp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Appends a RESP request (an array of bulk strings) to `out`.
fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

impl Resp {
    pub(crate) fn connect(addr: &str) -> std::io::Result<Resp> {
        let addr: SocketAddr = addr.parse().map_err(|e| invalid(format!("{addr}: {e}")))?;
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Resp { reader: BufReader::new(stream.try_clone()?), writer: stream })
    }

    /// Sends one request (an array of bulk strings) and reads its reply.
    pub(crate) fn request(&mut self, args: &[&[u8]]) -> std::io::Result<Reply> {
        let mut out = Vec::new();
        encode(&mut out, args);
        self.writer.write_all(&out)?;
        self.read()
    }

    /// Sends requests in one write, then reads their replies in order.
    pub(crate) fn pipeline(&mut self, requests: &[Vec<&[u8]>]) -> std::io::Result<Vec<Reply>> {
        let mut out = Vec::new();
        for args in requests {
            encode(&mut out, args);
        }
        self.writer.write_all(&out)?;
        requests.iter().map(|_| self.read()).collect()
    }

    fn read(&mut self) -> std::io::Result<Reply> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "kv closed the connection"));
        }
        let Some(line) = line.strip_suffix("\r\n") else {
            return Err(invalid(format!("a reply line without CRLF: {line:?}")));
        };
        let number = |text: &str| text.parse::<i64>().map_err(|_| invalid(format!("not a number: {line:?}")));
        match line.split_at_checked(1) {
            Some(("+", rest)) => Ok(Reply::Simple(rest.to_string())),
            Some(("-", rest)) => Ok(Reply::Error(rest.to_string())),
            Some((":", rest)) => Ok(Reply::Int(number(rest)?)),
            Some(("*", rest)) => Ok(Reply::Array(number(rest)?)),
            Some(("$", rest)) => {
                let Ok(len) = usize::try_from(number(rest)?) else { return Ok(Reply::Bulk(None)) };
                let mut bytes = vec![0; len + 2];
                self.reader.read_exact(&mut bytes)?;
                if !bytes.ends_with(b"\r\n") {
                    return Err(invalid("a bulk string without its CRLF".into()));
                }
                bytes.truncate(len);
                Ok(Reply::Bulk(Some(bytes)))
            }
            _ => Err(invalid(format!("not a RESP reply: {line:?}"))),
        }
    }
}

// --------------------------------------------------------------- clients

/// What the clients share with the demo: switches and counters.
pub(crate) struct Load {
    pub(crate) started: Instant,
    pub(crate) stop: AtomicBool,
    /// Whether the clients send INCR (while 1.1.0 runs).
    pub(crate) incr: AtomicBool,
    pub(crate) connected: AtomicUsize,
    /// Clients whose thread has ended.
    pub(crate) done: AtomicUsize,
    pub(crate) requests: AtomicU64,
    pub(crate) sets: AtomicU64,
    pub(crate) gets: AtomicU64,
    pub(crate) incrs: AtomicU64,
    /// Calls and casts of JSON clients (the scenario runner's).
    pub(crate) calls: AtomicU64,
    pub(crate) casts: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) dropped: AtomicU64,
    /// The slowest reply since the last [`Load::window`], µs.
    pub(crate) slowest_us: AtomicU64,
    /// Each client's completed loop iterations.
    pub(crate) iterations: Vec<AtomicU64>,
    /// The first problems the clients saw.
    pub(crate) errors: Mutex<Vec<String>>,
    pub(crate) shape: Shape,
}

/// How hard the clients push: the demo's clients send one request at a
/// time as fast as replies come, until told to stop.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Shape {
    /// Requests per second, all clients together; `None`: as fast as
    /// replies come.
    pub(crate) rate: Option<f64>,
    /// The clients stop by themselves this long after they start.
    pub(crate) duration: Option<Duration>,
    /// SET/GET pairs written at once before reading their replies (at
    /// least 1).
    pub(crate) pipeline: usize,
}

/// A snapshot of the counters.
#[derive(Clone, Copy, Default)]
pub(crate) struct Counts {
    pub(crate) requests: u64,
    pub(crate) sets: u64,
    pub(crate) gets: u64,
    pub(crate) incrs: u64,
    pub(crate) calls: u64,
    pub(crate) casts: u64,
    pub(crate) failures: u64,
    pub(crate) dropped: u64,
}

impl Counts {
    /// Adds another's counters to these.
    pub(crate) fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.sets += o.sets;
        self.gets += o.gets;
        self.incrs += o.incrs;
        self.calls += o.calls;
        self.casts += o.casts;
        self.failures += o.failures;
        self.dropped += o.dropped;
    }
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, o: Counts) -> Counts {
        Counts {
            requests: self.requests - o.requests,
            sets: self.sets - o.sets,
            gets: self.gets - o.gets,
            incrs: self.incrs - o.incrs,
            calls: self.calls - o.calls,
            casts: self.casts - o.casts,
            failures: self.failures - o.failures,
            dropped: self.dropped - o.dropped,
        }
    }
}

impl Load {
    pub(crate) fn new(clients: usize) -> Load {
        Load::shaped(clients, Shape { pipeline: 1, ..Shape::default() })
    }

    pub(crate) fn shaped(clients: usize, shape: Shape) -> Load {
        Load {
            shape: Shape { pipeline: shape.pipeline.max(1), ..shape },
            started: Instant::now(),
            stop: AtomicBool::new(false),
            incr: AtomicBool::new(false),
            connected: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            sets: AtomicU64::new(0),
            gets: AtomicU64::new(0),
            incrs: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            casts: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            slowest_us: AtomicU64::new(0),
            iterations: (0..clients).map(|_| AtomicU64::new(0)).collect(),
            errors: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn counts(&self) -> Counts {
        Counts {
            requests: self.requests.load(Ordering::SeqCst),
            sets: self.sets.load(Ordering::SeqCst),
            gets: self.gets.load(Ordering::SeqCst),
            incrs: self.incrs.load(Ordering::SeqCst),
            calls: self.calls.load(Ordering::SeqCst),
            casts: self.casts.load(Ordering::SeqCst),
            failures: self.failures.load(Ordering::SeqCst),
            dropped: self.dropped.load(Ordering::SeqCst),
        }
    }

    pub(crate) fn error(&self, text: String) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.len() < MAX_LISTED {
            errors.push(text);
        }
    }

    pub(crate) fn fail(&self, text: String) {
        self.failures.fetch_add(1, Ordering::SeqCst);
        self.error(text);
    }

    /// Starts a measurement window.
    fn window(&self) -> Window {
        self.slowest_us.store(0, Ordering::SeqCst);
        Window { counts: self.counts(), started: Instant::now() }
    }

    /// Waits until every client still running has finished the loop
    /// iteration it was in (after a switch changed).
    fn settle(&self) {
        let seen: Vec<u64> = self.iterations.iter().map(|i| i.load(Ordering::SeqCst)).collect();
        let deadline = Instant::now() + REPLY_TIMEOUT * 3;
        while Instant::now() < deadline {
            let all =
                self.iterations.iter().zip(&seen).all(|(now, then)| now.load(Ordering::SeqCst) >= then + 2);
            if all || self.done.load(Ordering::SeqCst) > 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Counters at the start of a phase.
struct Window {
    counts: Counts,
    started: Instant,
}

/// Client `i`: SET, GET (and INCR while asked) on its own keys, every
/// reply checked, until told to stop or its connection drops.
pub(crate) fn client(i: usize, addr: &str, load: &Load) {
    struct Done<'a>(&'a Load);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.done.fetch_add(1, Ordering::SeqCst);
        }
    }
    let _done = Done(load);
    let mut conn = match Resp::connect(addr) {
        Ok(conn) => conn,
        Err(error) => {
            load.dropped.fetch_add(1, Ordering::SeqCst);
            load.error(format!("client {i}: could not connect to {addr}: {error}"));
            return;
        }
    };
    load.connected.fetch_add(1, Ordering::SeqCst);
    let shape = load.shape;
    let mut pacer = Pacer::new(load);
    let key = format!("demo:client:{i}");
    let counter = format!("demo:counter:{i}");
    let mut last_incr: Option<i64> = None;
    let mut n: u64 = 0;
    while pacer.going(load) {
        n += 1;
        let incr = load.incr.load(Ordering::SeqCst);
        let values: Vec<String> =
            (0..shape.pipeline).map(|j| format!("value {n}.{j} of client {i}")).collect();
        // Each request with the counter it counts in and, for a GET, the
        // value it must read.
        let mut batch = Vec::new();
        let mut requests: Vec<Vec<&[u8]>> = Vec::new();
        for value in &values {
            batch.push((&load.sets, None));
            requests.push(vec![&b"SET"[..], key.as_bytes(), value.as_bytes()]);
            batch.push((&load.gets, Some(value.as_str())));
            requests.push(vec![&b"GET"[..], key.as_bytes()]);
            if incr {
                batch.push((&load.incrs, None));
                requests.push(vec![&b"INCR"[..], counter.as_bytes()]);
            }
        }
        let started = Instant::now();
        let replies = match conn.pipeline(&requests) {
            Ok(replies) => replies,
            Err(error) => {
                load.dropped.fetch_add(1, Ordering::SeqCst);
                let commands: Vec<String> =
                    requests.iter().map(|args| String::from_utf8_lossy(args[0]).into_owned()).collect();
                load.error(format!("client {i}: connection lost during {}: {error}", commands.join(" ")));
                return;
            }
        };
        let took = started.elapsed().as_micros() as u64;
        load.slowest_us.fetch_max(took, Ordering::SeqCst);
        for (((kind, value), args), reply) in batch.iter().zip(&requests).zip(&replies) {
            load.requests.fetch_add(1, Ordering::SeqCst);
            kind.fetch_add(1, Ordering::SeqCst);
            match (args[0], reply, value) {
                (b"SET", Reply::Simple(ok), _) if ok == "OK" => {}
                (b"GET", Reply::Bulk(Some(got)), Some(value)) if got == value.as_bytes() => {}
                (b"INCR", Reply::Int(got), _) if last_incr.is_none_or(|last| *got == last + 1) => {
                    last_incr = Some(*got);
                }
                (command, _, _) => {
                    let expected = match command {
                        b"SET" => "+OK".to_string(),
                        b"GET" => format!("{:?}", value.unwrap_or("")),
                        _ => last_incr.map_or("an integer".into(), |last| format!(":{}", last + 1)),
                    };
                    load.fail(format!(
                        "client {i}: {} {} answered {reply}, expected {expected}",
                        String::from_utf8_lossy(command),
                        String::from_utf8_lossy(args[1])
                    ));
                }
            }
        }
        load.iterations[i].fetch_add(1, Ordering::SeqCst);
        pacer.sent(batch.len(), load);
    }
}

/// One client's pace: its share of the load's `rate`, until its
/// `duration` is over or the load stops.
pub(crate) struct Pacer {
    /// One request every `gap` (`None`: as fast as replies come).
    gap: Option<Duration>,
    from: Instant,
    until: Option<Instant>,
    sent: u32,
}

impl Pacer {
    pub(crate) fn new(load: &Load) -> Pacer {
        let from = Instant::now();
        Pacer {
            gap: load.shape.rate.map(|rate| Duration::from_secs_f64(load.iterations.len() as f64 / rate)),
            from,
            until: load.shape.duration.map(|d| from + d),
            sent: 0,
        }
    }

    /// Whether the client goes on.
    pub(crate) fn going(&self, load: &Load) -> bool {
        !load.stop.load(Ordering::SeqCst) && self.until.is_none_or(|until| Instant::now() < until)
    }

    /// Counts `n` requests sent, then waits until the next one is due (or
    /// the load stops).
    pub(crate) fn sent(&mut self, n: usize, load: &Load) {
        let Some(gap) = self.gap else { return };
        self.sent = self.sent.saturating_add(n as u32);
        let next = self.from + gap * self.sent;
        while !load.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if next <= now {
                break;
            }
            std::thread::sleep((next - now).min(Duration::from_millis(50)));
        }
    }
}

// ----------------------------------------------------------- the script

/// One phase's result, for the report.
struct Phase {
    name: String,
    took: Duration,
    counts: Counts,
    slowest_ms: f64,
    outcome: String,
}

/// Upgrade figures from a node's report.
struct Upgrade {
    what: String,
    moved: usize,
    upgrade_ms: f64,
    pause_p99_us: f64,
    pause_max_us: f64,
    lost: u64,
}

struct Demo {
    clients: usize,
    addr: String,
    phases: Vec<Phase>,
    upgrades: Vec<Upgrade>,
    refused: Option<String>,
    problems: Vec<String>,
}

impl Demo {
    fn new(clients: usize, addr: String) -> Demo {
        Demo { clients, addr, phases: Vec::new(), upgrades: Vec::new(), refused: None, problems: Vec::new() }
    }

    fn problem(&mut self, text: String) {
        self.problems.push(text);
    }

    /// Records a problem unless `ok`; returns `ok`.
    fn expect(&mut self, ok: bool, problem: String) -> bool {
        if !ok {
            self.problem(problem);
        }
        ok
    }

    /// Closes a window: records the phase and checks that the clients saw
    /// no failure and kept their connections.
    fn close(&mut self, name: &str, window: Window, load: &Load, outcome: String) -> Counts {
        let counts = load.counts() - window.counts;
        let slowest_ms = load.slowest_us.load(Ordering::SeqCst) as f64 / 1e3;
        self.expect(counts.requests > 0, format!("{name}: the clients got no reply at all"));
        self.expect(
            counts.failures == 0,
            format!("{name}: {} request(s) got a wrong answer", counts.failures),
        );
        self.expect(counts.dropped == 0, format!("{name}: {} connection(s) dropped", counts.dropped));
        self.phases.push(Phase {
            name: name.to_string(),
            took: window.started.elapsed(),
            counts,
            slowest_ms,
            outcome,
        });
        counts
    }

    /// The clients' figures in a phase line.
    fn traffic(counts: &Counts, slowest_ms: f64) -> String {
        format!(
            "{} requests, {} failed, {} dropped, slowest reply {slowest_ms:.1} ms",
            thousands(counts.requests),
            counts.failures,
            counts.dropped
        )
    }

    /// Version `version` of kv answers, per the node's status and kv's own
    /// `Version` call, and kv holds every client's connection.
    fn check_running(&mut self, node: &NodeProcess, phase: &str, version: &str) -> anyhow::Result<String> {
        let status = node.checked(Client::status)?;
        let running = release_of(&status);
        self.expect(
            running == format!("kv {version}"),
            format!("{phase}: the node runs {running}, expected kv {version}"),
        );
        let module = node.checked(|c| c.call("kv", json!("Version")))?;
        let module_version = module.as_str().unwrap_or("?").to_string();
        let expected_module = version.split('-').next().unwrap_or(version);
        self.expect(
            module_version == expected_module,
            format!("{phase}: the kv process runs kv {module_version}, expected {expected_module}"),
        );
        let connections = node.checked(|c| c.call("kv", json!("Connections")))?;
        let connections = connections.as_u64().unwrap_or(0);
        let expected = self.clients as u64 + 1;
        self.expect(
            connections == expected,
            format!(
                "{phase}: kv holds {connections} connection(s), expected {expected} ({} clients and the probe)",
                self.clients
            ),
        );
        Ok(if connections == expected {
            format!("all {connections} connections kept")
        } else {
            format!("{connections} of {expected} connections left")
        })
    }

    /// Upgrade figures of a deploy's or rollback's report (zeros without
    /// one).
    fn upgrade_of(what: &str, report: Option<&Report>) -> Upgrade {
        Upgrade {
            what: what.to_string(),
            moved: report.map_or(0, |r| r.moved),
            upgrade_ms: report.map_or(0.0, |r| r.upgrade_ms),
            pause_p99_us: report.map_or(0.0, |r| r.pause.p99_us),
            pause_max_us: report.map_or(0.0, |r| r.pause.max_us),
            lost: report.map_or(0, |r| r.messages_lost),
        }
    }

    /// Steps 3 to 6.
    fn drive(
        &mut self,
        node: &NodeProcess,
        load: &Load,
        archives: &[PathBuf],
        hold: Duration,
    ) -> anyhow::Result<()> {
        // 3. 1.0.0 under load.
        let deadline = Instant::now() + Duration::from_secs(10);
        while load.connected.load(Ordering::SeqCst) + load.done.load(Ordering::SeqCst) < self.clients
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let connected = load.connected.load(Ordering::SeqCst);
        if connected < self.clients {
            bail!("only {connected} of {} clients could connect to kv on {}", self.clients, self.addr);
        }
        let mut probe = Resp::connect(&self.addr)
            .with_context(|| format!("connecting the probe to kv on {}", self.addr))?;
        let window = load.window();
        let incr_before = probe.request(&[b"INCR", b"demo:probe"]).context("probe: INCR on 1.0.0")?;
        let no_incr = matches!(&incr_before, Reply::Error(e) if e.contains("unknown command"));
        self.expect(
            no_incr,
            format!("1.0.0: INCR answered {incr_before}, expected an unknown-command error"),
        );
        std::thread::sleep(hold);
        let connections = self.check_running(node, "1.0.0", "1.0.0")?;
        let name = "kv 1.0.0 under load";
        let counts = self.close(name, window, load, "serving".into());
        say(&format!(
            "[3/7] load      {} clients on kv 1.0.0 ({connections}): {}; INCR is not there yet ({})",
            self.clients,
            Self::traffic(&counts, self.phases.last().map_or(0.0, |p| p.slowest_ms)),
            short(&incr_before)
        ));

        // 4. Deploy 1.1.0 live.
        let window = load.window();
        let answer = node.ask(|c| {
            let deploy = DeployRequest {
                archive: archives[1].clone(),
                health_window_ms: 500,
                ..DeployRequest::default()
            };
            c.deploy(deploy, None)
        })?;
        let report = match &answer {
            Ok(deployed) => Some(&deployed.report),
            Err(failure) => failure.report.as_deref(),
        };
        let upgrade = Self::upgrade_of("kv 1.0.0 → 1.1.0", report);
        match &answer {
            Err(failure) => self.problem(format!("deploying kv 1.1.0 was refused: {}", failure.error)),
            Ok(deployed) => {
                let outcome = &deployed.report.outcome;
                self.expect(
                    *outcome == Outcome::Committed,
                    format!("deploying kv 1.1.0: the upgrade ended {:?}", outcome_name(outcome)),
                );
                self.expect(
                    upgrade.lost == 0,
                    format!("deploying kv 1.1.0 lost {} message(s)", upgrade.lost),
                );
                self.expect(upgrade.moved > 0, "deploying kv 1.1.0 moved no process".into());
            }
        }
        let connections = self.check_running(node, "after deploying 1.1.0", "1.1.0")?;
        load.incr.store(true, Ordering::SeqCst);
        let incr_after = probe.request(&[b"INCR", b"demo:probe"]).context("probe: INCR on 1.1.0")?;
        self.expect(incr_after == Reply::Int(1), format!("1.1.0: INCR answered {incr_after}, expected :1"));
        std::thread::sleep(hold);
        let health = match report.and_then(|r| r.health.as_ref()) {
            Some(health) => format!(
                ", health window {:.0} ms {}",
                health.watched_ms,
                if health.passed { "passed" } else { "failed" }
            ),
            None => String::new(),
        };
        let outcome = format!(
            "committed: {} process(es) moved in {:.1} ms, pause p99 {:.1} µs, {} messages lost{health}",
            upgrade.moved, upgrade.upgrade_ms, upgrade.pause_p99_us, upgrade.lost
        );
        let counts = self.close("deploy kv 1.1.0", window, load, outcome.clone());
        self.expect(counts.incrs > 0, "after deploying 1.1.0 the clients' INCRs got no reply".into());
        self.upgrades.push(upgrade);
        say(&format!(
            "[4/7] deploy    kv 1.1.0 live, {outcome}; {connections}; {}; INCR works ({} INCRs, probe {incr_after})",
            Self::traffic(&counts, self.phases.last().map_or(0.0, |p| p.slowest_ms)),
            thousands(counts.incrs)
        ));

        // 5. 1.2.0-broken, refused and undone.
        let window = load.window();
        let set = probe.request(&[b"SET", BAD_KEY.as_bytes(), b"1.2.0-broken refuses this key"])?;
        self.expect(set == Reply::Simple("OK".into()), format!("SET {BAD_KEY} answered {set}"));
        let answer = node.ask(|c| {
            c.deploy(DeployRequest { archive: archives[2].clone(), ..DeployRequest::default() }, None)
        })?;
        let refused = answer.is_err();
        let (error, report) = match &answer {
            Ok(_) => (String::new(), None),
            Err(failure) => (failure.error.clone(), failure.report.as_deref()),
        };
        let outcome = report.map_or("", |r| outcome_name(&r.outcome));
        if self.expect(refused, "deploying kv 1.2.0-broken was accepted; it must be refused".into()) {
            self.expect(
                outcome == "aborted" || outcome == "rolled_back",
                format!("deploying kv 1.2.0-broken: the upgrade ended {outcome:?}, expected aborted"),
            );
            self.expect(
                error.contains(BAD_KEY),
                format!("the refusal of kv 1.2.0-broken does not name the key {BAD_KEY}: {error}"),
            );
            let undone = report.and_then(|r| r.rollback.as_ref());
            self.expect(
                undone.is_some_and(|r| r.failed.is_empty() && r.errors.is_empty()),
                format!("kv 1.2.0-broken was not undone completely: {}", json!(undone)),
            );
        }
        let connections = self.check_running(node, "after the refused 1.2.0-broken", "1.1.0")?;
        let kept = probe.request(&[b"GET", BAD_KEY.as_bytes()])?;
        self.expect(
            kept == Reply::Bulk(Some(b"1.2.0-broken refuses this key".to_vec())),
            format!("after the refused 1.2.0-broken, GET {BAD_KEY} answered {kept}"),
        );
        std::thread::sleep(hold);
        let outcome = if refused { format!("refused and undone ({outcome})") } else { "accepted".into() };
        let counts = self.close("deploy kv 1.2.0-broken", window, load, outcome.clone());
        self.refused = Some(error.clone());
        say(&format!(
            "[5/7] broken    kv 1.2.0-broken {outcome}; the node still runs kv 1.1.0, {connections}; {}",
            Self::traffic(&counts, self.phases.last().map_or(0.0, |p| p.slowest_ms))
        ));
        say(&format!("                the node said: {error}"));

        // 6. Roll back to 1.0.0.
        load.incr.store(false, Ordering::SeqCst);
        load.settle();
        let window = load.window();
        let answer = node.ask(|c| c.rollback(None, None))?;
        let rolled_back = answer.is_ok();
        let upgrade = Self::upgrade_of(
            "rollback kv 1.1.0 → 1.0.0",
            match &answer {
                Ok(done) => Some(&done.report),
                Err(failure) => failure.report.as_deref(),
            },
        );
        let refusal = answer.as_ref().err().map_or("?", |failure| failure.error.as_str());
        if self.expect(rolled_back, format!("rolling back to kv 1.0.0 was refused: {refusal}")) {
            self.expect(upgrade.lost == 0, format!("rolling back lost {} message(s)", upgrade.lost));
        }
        let connections = self.check_running(node, "after the rollback", "1.0.0")?;
        let incr_gone = probe.request(&[b"INCR", b"demo:probe"])?;
        self.expect(
            matches!(&incr_gone, Reply::Error(e) if e.contains("unknown command")),
            format!("after the rollback INCR answered {incr_gone}, expected an unknown-command error"),
        );
        let counter = probe.request(&[b"GET", b"demo:probe"])?;
        self.expect(
            counter == Reply::Bulk(Some(b"1".to_vec())),
            format!("after the rollback GET demo:probe answered {counter}, expected \"1\" (kept across)"),
        );
        std::thread::sleep(hold);
        let outcome = if rolled_back {
            format!(
                "rolled back: {} process(es) moved in {:.1} ms, pause p99 {:.1} µs, {} messages lost",
                upgrade.moved, upgrade.upgrade_ms, upgrade.pause_p99_us, upgrade.lost
            )
        } else {
            "refused".into()
        };
        let counts = self.close("rollback to kv 1.0.0", window, load, outcome.clone());
        if rolled_back {
            self.upgrades.push(upgrade);
        }
        say(&format!(
            "[6/7] rollback  kv 1.0.0 live, {outcome}; {connections}; {}",
            Self::traffic(&counts, self.phases.last().map_or(0.0, |p| p.slowest_ms))
        ));
        if !rolled_back {
            say(&format!("                the node said: {refusal}"));
        }
        // The probe's own connection went through it all.
        let pong = probe.request(&[b"PING"])?;
        self.expect(pong == Reply::Simple("PONG".into()), format!("the probe's PING answered {pong}"));
        Ok(())
    }

    /// Checks over the whole run: every client connected, none dropped,
    /// nothing failed.
    fn finish_clients(&mut self, load: &Load, totals: &Counts) {
        let connected = load.connected.load(Ordering::SeqCst);
        self.expect(connected == self.clients, format!("{connected} of {} clients connected", self.clients));
        self.expect(
            totals.failures == 0,
            format!("{} request(s) in all got a wrong answer", totals.failures),
        );
        self.expect(totals.dropped == 0, format!("{} connection(s) in all dropped", totals.dropped));
        let errors = load.errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for error in errors {
            self.problem(error);
        }
    }

    fn report(
        &self,
        totals: &Counts,
        clients_time: Duration,
        build: Duration,
        boot: Duration,
        total: Duration,
    ) {
        let mut out = String::from("\nreport\n");
        out.push_str(&format!(
            "  clients     {} connections (plus a probe) for {:.1} s, {} dropped\n",
            self.clients,
            clients_time.as_secs_f64(),
            totals.dropped
        ));
        out.push_str(&format!(
            "  requests    {} (SET {}, GET {}, INCR {}), {} failed, {} requests/s\n",
            thousands(totals.requests),
            thousands(totals.sets),
            thousands(totals.gets),
            thousands(totals.incrs),
            totals.failures,
            thousands((totals.requests as f64 / clients_time.as_secs_f64().max(1e-9)) as u64)
        ));
        out.push_str("  phases\n");
        for phase in &self.phases {
            out.push_str(&format!(
                "    {:<26} {:>5.1} s {:>10} requests  {} failed  {} dropped  slowest {:>6.1} ms  {}\n",
                phase.name,
                phase.took.as_secs_f64(),
                thousands(phase.counts.requests),
                phase.counts.failures,
                phase.counts.dropped,
                phase.slowest_ms,
                phase.outcome
            ));
        }
        for upgrade in &self.upgrades {
            out.push_str(&format!(
                "  {:<26}  {} process(es) moved in {:.1} ms, pause p99 {:.1} µs (max {:.1} µs), {} messages lost\n",
                upgrade.what,
                upgrade.moved,
                upgrade.upgrade_ms,
                upgrade.pause_p99_us,
                upgrade.pause_max_us,
                upgrade.lost
            ));
        }
        if let Some(error) = &self.refused {
            out.push_str(&format!("  kv 1.2.0-broken refused     {error}\n"));
        }
        out.push_str(&format!(
            "  times       build {:.1} s, boot {:.2} s, under load {:.1} s, total {:.1} s\n",
            build.as_secs_f64(),
            boot.as_secs_f64(),
            clients_time.as_secs_f64(),
            total.as_secs_f64()
        ));
        if self.problems.is_empty() {
            out.push_str(
                "result: OK: no request failed, no connection dropped, no message lost, every step as expected\n",
            );
        } else {
            out.push_str(&format!("result: FAILED ({} problem(s))\n", self.problems.len()));
            for problem in self.problems.iter().take(MAX_LISTED) {
                out.push_str(&format!("  - {problem}\n"));
            }
        }
        say(out.trim_end());
    }
}

/// A reply for a progress line: an error up to its first comma.
fn short(reply: &Reply) -> String {
    match reply {
        Reply::Error(text) => format!("-{}", text.split(',').next().unwrap_or(text)),
        other => other.to_string(),
    }
}

/// 1234567 → "1,234,567".
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
