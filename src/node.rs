//! `relive node start`: the node daemon, a thin socket adapter over
//! [`relive_node::ReleaseHandler`], plus the process management around it
//! (detaching, heart, signals).
//!
//! - The control socket `<root>/control.sock` is created 0600; the peer's
//!   uid is checked on every connection. Each request line is decoded by
//!   [`relive_node::protocol::decode_request`] and answered by the
//!   handler; lines are capped at [`protocol::MAX_LINE_BYTES`], live
//!   connections at [`MAX_CONNECTIONS`], an idle connection is closed
//!   after [`IDLE_TIMEOUT`], and a request that panics is answered with an
//!   error (the node keeps running).
//! - SIGTERM and SIGINT stop the node as `node stop` does: supervisors
//!   shut down in order, the socket is removed, a log line says so, exit 0.
//! - Exit codes: 0 after a stop (heart does not restart it),
//!   [`EXIT_BOOT_FAILED`] when the node could not start at all (heart gives
//!   up), [`EXIT_SUPERVISOR_DIED`] when the release's top supervisor gave up
//!   (heart restarts it).
//! - Without `--foreground`, `node start` re-executes itself detached with
//!   `--foreground` (output to `<root>/node.log`) and waits until the
//!   socket answers. With `--heart`, the process started is a monitor that
//!   runs the node, pings it every [`HEART_INTERVAL`], kills it when it has
//!   not answered for `--heart-timeout` (OTP heart's `-ht`), and starts it
//!   again whenever it dies without being asked to stop. SIGTERM to the
//!   heart stops the node gracefully, then the heart.

use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use relive_node::client::{Client, SOCKET};
use relive_node::protocol::{self, Failure, Progress, Reply, Request, Response};
use relive_node::{BootError, Config, ReleaseHandler};
use relive_releases::archive::DEFAULT_MAX_ARCHIVE_BYTES;

use crate::release::RootArg;

/// The log of a daemonized node (and its heart), in the root.
pub const LOG: &str = "node.log";
/// Exit code of a node that could not start (bad archive, no release,
/// store in use): heart does not try again.
pub const EXIT_BOOT_FAILED: i32 = 3;
/// Exit code of a node whose release's top supervisor gave up: heart
/// restarts it.
pub const EXIT_SUPERVISOR_DIED: i32 = 2;
/// How long a daemonized start waits for the socket to answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Control connections served at once; more are answered with an error.
pub const MAX_CONNECTIONS: usize = 64;
/// A control connection with no request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often heart pings the node.
const HEART_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Args)]
pub struct StartArgs {
    #[command(flatten)]
    root: RootArg,
    /// Unpack (if needed), install and make permanent this release archive,
    /// then boot it (default: boot the store's permanent release).
    #[arg(long)]
    boot: Option<PathBuf>,
    /// Keep a small monitor process that starts the node again when it
    /// dies or stops answering without being asked to stop (it then boots
    /// the permanent release).
    #[arg(long)]
    heart: bool,
    /// With --heart: kill and restart a node that has not answered a ping
    /// for this long (e.g. 30s).
    #[arg(long, value_parser = crate::control::parse_duration, default_value = "60s")]
    heart_timeout: Duration,
    /// Refuse unsigned archives and releases, even when the store trusts
    /// no key (<root>/keys/*.pub); with trusted keys they are refused anyway.
    #[arg(long)]
    require_signed: bool,
    /// The largest archive a deploy reads (e.g. 512M, 2G; bytes without a unit).
    #[arg(long, value_parser = parse_size, default_value_t = DEFAULT_MAX_ARCHIVE_BYTES)]
    max_archive_size: u64,
    /// Run in this process instead of detaching (output to stderr rather
    /// than <root>/node.log).
    #[arg(long)]
    foreground: bool,
    /// Serve the live observer page and its JSON API on this address: a
    /// port (on 127.0.0.1) or IP:PORT. A token is printed at start (and
    /// written 0600 to <root>/run/http.token); the page needs it once.
    #[arg(long, value_parser = relive_observer::parse_listen, value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,
    /// With --http: the largest archive the page uploads (default: --max-archive-size).
    #[arg(long, value_parser = parse_size)]
    http_max_upload: Option<u64>,
    /// Make the node an Erlang distribution node with this full name
    /// (erl's -name): other nodes (erl, Elixir, relive) reach its
    /// processes (docs/distribution.md). Registers with EPMD (started when
    /// none runs; ERL_EPMD_PORT is honoured).
    #[arg(long, value_name = "NAME@HOST", conflicts_with = "sname")]
    name: Option<String>,
    /// As --name with this machine's short host name (erl's -sname).
    #[arg(long, value_name = "NAME")]
    sname: Option<String>,
    /// The distribution cookie's file (default: ~/.erlang.cookie, created
    /// 0400 with a random cookie when missing). The cookie itself is never
    /// taken on the command line.
    #[arg(long, value_name = "FILE")]
    cookie_file: Option<PathBuf>,
    /// Be visible in other nodes' nodes() (hidden by default).
    #[arg(long)]
    published: bool,
    /// A connected node silent this long (seconds) is taken as down; ticks
    /// go out every quarter of it (erl's net_ticktime).
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    net_ticktime: u64,
}

impl StartArgs {
    /// The distribution settings, with the cookie read (or created).
    fn distribution(&self) -> anyhow::Result<Option<relive_dist::DistConfig>> {
        let name = match (&self.name, &self.sname) {
            (Some(name), _) if !name.contains('@') => {
                bail!("--name takes NAME@HOST (got {name:?}); use --sname NAME for this host's short name")
            }
            (Some(name), _) => name.clone(),
            (None, Some(sname)) if sname.contains('@') => {
                bail!("--sname takes a name without a host (got {sname:?}); use --name NAME@HOST")
            }
            (None, Some(sname)) => sname.clone(),
            (None, None) => return Ok(None),
        };
        let cookie = relive_dist::cookie::read_or_create(self.cookie_file.as_deref())?;
        let mut config = relive_dist::DistConfig::new(&name, cookie);
        config.split_name()?;
        config.published = self.published;
        config.net_ticktime = Duration::from_secs(self.net_ticktime);
        Ok(Some(config))
    }
}

/// Parses `512M`, `2G`, `100K` or a number of bytes.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a size: write e.g. 512M or 2G"))?;
    let scale: u64 = match unit.trim().to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        other => return Err(format!("unknown unit {other:?} in {text:?}: use K, M or G")),
    };
    number.checked_mul(scale).ok_or_else(|| format!("{text:?} is too large"))
}

/// `relive node start`.
pub fn start(args: StartArgs) -> anyhow::Result<()> {
    let root = args.root.path();
    let boot = args.boot.as_ref().map(|b| std::path::absolute(b).unwrap_or(b.clone()));
    if !args.foreground {
        return daemonize(&root, &args, boot.as_deref());
    }
    if args.heart {
        return heart(&root, &args, boot.as_deref());
    }
    let config = Config {
        boot,
        require_signed: args.require_signed,
        max_archive_bytes: args.max_archive_size,
        ..Config::new(&root)
    };
    let http = args.http.map(|addr| relive_observer::Settings {
        addr,
        max_upload_bytes: args.http_max_upload.unwrap_or(args.max_archive_size),
        token_file: Some(relive_observer::token_file(&root)),
        upload_dir: root.join(relive_node::RUN_DIR).join("uploads"),
    });
    let distribution = match args.distribution() {
        Ok(distribution) => distribution,
        Err(error) => {
            eprintln!("relive: {error:#}");
            std::process::exit(EXIT_BOOT_FAILED);
        }
    };
    if let Err(error) = run(&config, http, distribution) {
        // The node never served: not something a restart fixes.
        eprintln!("relive: {error:#}");
        std::process::exit(EXIT_BOOT_FAILED);
    }
    Ok(())
}

// ------------------------------------------------------------ daemon, heart

/// The `node start --foreground` command of a child (the node, or its heart).
fn child_command(root: &Path, args: &StartArgs, boot: Option<&Path>, heart: bool) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("finding the relive executable to start the node")?;
    let mut command = Command::new(exe);
    command.args(["node", "start", "--foreground", "--root"]).arg(root);
    command.arg("--max-archive-size").arg(args.max_archive_size.to_string());
    if let Some(boot) = boot {
        command.arg("--boot").arg(boot);
    }
    if args.require_signed {
        command.arg("--require-signed");
    }
    if let Some(http) = args.http {
        command.arg("--http").arg(http.to_string());
    }
    if let Some(max) = args.http_max_upload {
        command.arg("--http-max-upload").arg(max.to_string());
    }
    // The cookie's file, never the cookie: a command line is public.
    if let Some(name) = &args.name {
        command.arg("--name").arg(name);
    }
    if let Some(sname) = &args.sname {
        command.arg("--sname").arg(sname);
    }
    if let Some(file) = &args.cookie_file {
        command.arg("--cookie-file").arg(std::path::absolute(file).unwrap_or(file.clone()));
    }
    if args.published {
        command.arg("--published");
    }
    command.arg("--net-ticktime").arg(args.net_ticktime.to_string());
    if heart {
        command.arg("--heart").arg("--heart-timeout").arg(format!("{}ms", args.heart_timeout.as_millis()));
    }
    Ok(command)
}

/// The error for starting a node where one answers already.
fn already_running(root: &Path) -> Option<anyhow::Error> {
    let pid = Client::connect(root).ok()?.ping().ok()?;
    Some(anyhow::anyhow!(
        "a node is already running on {} (pid {pid}): stop it first with `relive node stop --root {}`, \
         or pass another --root",
        root.display(),
        root.display()
    ))
}

/// Starts the node (or its heart) detached, waits until the control socket
/// answers, prints its pid.
fn daemonize(root: &Path, args: &StartArgs, boot: Option<&Path>) -> anyhow::Result<()> {
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
    let mut command = child_command(root, args, boot, args.heart)?;
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
        if let Ok(status) = Client::connect(root).and_then(|mut c| c.status())
            && (status.pid == pid || status.parent_pid == Some(pid))
        {
            spinner.finish_and_clear();
            let heart = if args.heart { format!(", heart pid {pid}") } else { String::new() };
            println!(
                "node started (pid {}{heart}) on {}: {} {}",
                status.pid,
                root.display(),
                status.release.name,
                status.release.version
            );
            if let Some(addr) = args.http {
                print_observer(root, addr);
            }
            return Ok(());
        }
        if started.elapsed() > START_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(failed(format!("its control socket did not answer within {START_TIMEOUT:?}")));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Prints the observer's address with the token the node wrote (it is
/// written before the control socket answers).
fn print_observer(root: &Path, asked: std::net::SocketAddr) {
    // The address bound (port 0 asks for any free port).
    let addr = fs::read_to_string(observer_addr_file(root))
        .ok()
        .and_then(|text| text.trim().parse::<std::net::SocketAddr>().ok())
        .unwrap_or(asked);
    let file = relive_observer::token_file(root);
    match fs::read_to_string(&file) {
        Ok(token) => println!("observer: http://{addr}/?token={}", token.trim()),
        Err(error) => println!("observer: http://{addr}/ (its token: {}: {error})", file.display()),
    }
}

/// Where a node writes the address its observer bound, for the command
/// that started it to print.
fn observer_addr_file(root: &Path) -> PathBuf {
    relive_observer::token_file(root).with_file_name("http.addr")
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

/// SIGTERM and SIGINT, as a flag a loop can poll.
fn termination_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&flag)).context("installing the signal handlers")?;
    }
    Ok(flag)
}

fn send_signal(child: &Child, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// The heart: runs the node in the foreground, pings it, and starts it
/// again when it dies or stops answering without having been asked to stop.
fn heart(root: &Path, args: &StartArgs, boot: Option<&Path>) -> anyhow::Result<()> {
    /// More deaths than this within [`WINDOW`] and heart gives up.
    const MAX_RESTARTS: usize = 5;
    const WINDOW: Duration = Duration::from_secs(60);
    let terminate = termination_flag()?;
    let mut boot = boot.map(Path::to_path_buf);
    let mut deaths: VecDeque<Instant> = VecDeque::new();
    eprintln!(
        "heart: pid {}, watching the node on {} (ping every {HEART_INTERVAL:?}, timeout {:?})",
        std::process::id(),
        root.display(),
        args.heart_timeout
    );
    loop {
        let mut command = child_command(root, args, boot.as_deref(), false)?;
        command.stdin(Stdio::null());
        let mut child = command.spawn().context("heart: starting the node")?;
        let node_pid = child.id();
        eprintln!("heart: node started (pid {node_pid})");
        // Only the first start installs the archive; a restart boots the
        // permanent release.
        boot = None;
        let started = Instant::now();
        let mut answered: Option<Instant> = None;
        let mut next_ping = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().context("heart: waiting for the node")? {
                break status;
            }
            if terminate.load(Ordering::SeqCst) {
                eprintln!("heart: SIGTERM or SIGINT: stopping the node (pid {node_pid}), then heart");
                send_signal(&child, rustix::process::Signal::TERM);
                let status = child.wait().context("heart: waiting for the node to stop")?;
                eprintln!("heart: the node stopped ({status}); heart exits");
                return Ok(());
            }
            if Instant::now() >= next_ping {
                next_ping = Instant::now() + HEART_INTERVAL;
                let pong = Client::connect(root).and_then(|mut client| {
                    client.set_timeout(Some(args.heart_timeout))?;
                    client.ping()
                });
                match pong {
                    Ok(pid) if pid == node_pid => answered = Some(Instant::now()),
                    _ => {}
                }
                // Before its first answer the node may still be booting
                // (loading thousands of processes): it gets the start
                // timeout as well.
                let silent = answered.map_or(started.elapsed(), |t| t.elapsed());
                let limit = if answered.is_some() {
                    args.heart_timeout
                } else {
                    args.heart_timeout.max(START_TIMEOUT)
                };
                if silent > limit {
                    eprintln!(
                        "heart: the node (pid {node_pid}) has not answered for {:.1} s: kill -9 and restart",
                        silent.as_secs_f64()
                    );
                    send_signal(&child, rustix::process::Signal::KILL);
                    break child.wait().context("heart: waiting for the killed node")?;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        };
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

// ------------------------------------------------------------- the node

/// What the control connections share.
struct Daemon {
    handler: Arc<ReleaseHandler>,
    uid: u32,
    connections: AtomicUsize,
}

/// Runs a node in this process until it is stopped.
fn run(
    config: &Config,
    http: Option<relive_observer::Settings>,
    distribution: Option<relive_dist::DistConfig>,
) -> anyhow::Result<()> {
    let root = &config.root;
    relive_runtime::return_freed_memory_promptly();
    // Installed before boot, so a signal during a long boot is not lost.
    let terminate = termination_flag()?;
    let client_cap = client_connection_cap();
    let handler = match ReleaseHandler::boot(config) {
        Ok(handler) => handler,
        Err(error @ BootError::StoreInUse(_)) => {
            if let Some(running) = already_running(root) {
                return Err(running);
            }
            return Err(error.into());
        }
        Err(error) => return Err(error.into()),
    };
    let listener = match bind(root) {
        Ok(listener) => listener,
        Err(error) => {
            handler.stop();
            return Err(error);
        }
    };
    // Clients can never take the descriptors the control socket and the
    // store need: past the cap they are refused, not left to exhaust the
    // process's limit.
    handler.node().set_max_connections(Some(client_cap));
    // Kept for the node's life, as the observer.
    let _distribution =
        match distribution.map(|d| relive_dist::Distribution::start(handler.node(), d)).transpose() {
            Ok(Some(distribution)) => {
                let visibility = if distribution.published() { "published" } else { "hidden" };
                eprintln!(
                    "node: distribution {} on port {} ({visibility}, creation {})",
                    distribution.name(),
                    distribution.port(),
                    distribution.creation()
                );
                Some(distribution)
            }
            Ok(None) => None,
            Err(error) => {
                handler.stop();
                return Err(error.into());
            }
        };
    let handler = Arc::new(handler);
    if _distribution.is_some() {
        // Other nodes (relive cluster deploy, or erl) reach the release
        // handler as `relive_release_handler`.
        if let Err(error) =
            crate::cluster::serve(handler.node(), Arc::clone(&handler), config.max_archive_bytes)
        {
            handler.stop();
            return Err(error);
        }
    }
    // Kept for the node's life (the process exits without dropping it).
    let _observer = match http.map(|settings| start_observer(settings, &handler)).transpose() {
        Ok(observer) => observer,
        Err(error) => {
            handler.stop();
            return Err(error);
        }
    };
    let daemon = Arc::new(Daemon {
        handler,
        uid: rustix::process::getuid().as_raw(),
        connections: AtomicUsize::new(0),
    });
    watch_supervisor(&daemon);
    watch_signals(&daemon, terminate);
    eprintln!("node: control socket {} (mode 0600)", root.join(SOCKET).display());
    let mut failures = 0u32;
    for connection in listener.incoming() {
        match connection {
            Ok(stream) => {
                failures = 0;
                let daemon = Arc::clone(&daemon);
                let spawned = std::thread::Builder::new()
                    .name("relive-control".into())
                    .spawn(move || serve(&daemon, stream));
                if let Err(error) = spawned {
                    eprintln!("node: could not start a thread for a control connection: {error}");
                }
            }
            Err(error) => {
                // Out of file descriptors, typically: one line, then back
                // off, so the log does not fill.
                if failures == 0 {
                    eprintln!("node: accepting a control connection failed: {error}");
                }
                failures = failures.saturating_add(1);
                std::thread::sleep(Duration::from_millis(50).saturating_mul(failures.min(20)));
            }
        }
    }
    Ok(())
}

/// Starts the observer over the handler and says where it is.
fn start_observer(
    settings: relive_observer::Settings,
    handler: &Arc<ReleaseHandler>,
) -> anyhow::Result<relive_observer::Observer> {
    let loopback = settings.addr.ip().is_loopback();
    let observer =
        relive_observer::Observer::start(settings, relive_observer::Watched::Handler(Arc::clone(handler)))?;
    let addr_file = observer_addr_file(handler.root());
    let temp = addr_file.with_extension("addr.tmp");
    fs::write(&temp, observer.addr().to_string())
        .and_then(|()| fs::rename(&temp, &addr_file))
        .with_context(|| format!("writing the observer's address to {}", addr_file.display()))?;
    eprintln!(
        "node: observer on {} (token in {})",
        observer.url(),
        relive_observer::token_file(handler.root()).display()
    );
    if !loopback {
        eprintln!(
            "node: the observer listens on {}, beyond loopback: anyone who reaches it and has the token can deploy",
            observer.addr()
        );
    }
    Ok(observer)
}

/// File descriptors kept out of clients' reach for the control socket,
/// its connections, the store, logs and staged libraries.
const FD_RESERVE: usize = 128;

/// Raises the soft limit on open files to the hard one (a node serves many
/// clients) and returns how many client connections fit under it with
/// [`FD_RESERVE`] descriptors to spare (a quarter of a tiny limit).
fn client_connection_cap() -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let mut soft = limit.current;
    if limit.current < limit.maximum {
        let raised = Rlimit { current: limit.maximum, maximum: limit.maximum };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => soft = limit.maximum,
            Err(error) => eprintln!("node: could not raise the open-file limit to its maximum: {error}"),
        }
    }
    let soft = soft.map_or(usize::MAX, |soft| usize::try_from(soft).unwrap_or(usize::MAX));
    let reserve = FD_RESERVE.min(soft / 4);
    let cap = soft.saturating_sub(reserve);
    eprintln!(
        "node: open-file limit {soft}; at most {cap} client connections ({reserve} descriptors reserved)"
    );
    cap
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

/// Stops the node (supervisors in order), removes the socket, exits 0.
fn stop_and_exit(daemon: &Daemon, why: &str) -> ! {
    eprintln!("node: stopping ({why})");
    let _ = fs::remove_file(daemon.handler.root().join(SOCKET));
    daemon.handler.stop();
    remove_run_dir(daemon);
    eprintln!("node: stopped ({why})");
    std::process::exit(0);
}

/// After a graceful stop the root holds the store and the log only: the
/// node's staged libraries go too (a crash leaves them; the next start
/// clears them).
fn remove_run_dir(daemon: &Daemon) {
    let _ = fs::remove_dir_all(daemon.handler.root().join(relive_node::RUN_DIR));
}

/// SIGTERM and SIGINT stop the node as `node stop` does.
fn watch_signals(daemon: &Arc<Daemon>, terminate: Arc<AtomicBool>) {
    let daemon = Arc::clone(daemon);
    let _ = std::thread::Builder::new().name("relive-signals".into()).spawn(move || {
        while !terminate.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop_and_exit(&daemon, "SIGTERM or SIGINT");
    });
}

/// If the release's top supervisor gives up, the node exits so that heart
/// (if any) starts it again.
fn watch_supervisor(daemon: &Arc<Daemon>) {
    let daemon = Arc::clone(daemon);
    let _ = std::thread::Builder::new().name("relive-sup-watch".into()).spawn(move || {
        let handler = &daemon.handler;
        let waiter = handler.node().exit_waiter(handler.supervisor());
        let Some(reason) = waiter.wait(Duration::from_secs(10 * 365 * 24 * 3600)) else { return };
        if handler.is_stopping() {
            return;
        }
        eprintln!(
            "node: the release's top supervisor exited ({reason}); the node exits (heart, if any, starts it again)"
        );
        let _ = fs::remove_file(handler.root().join(SOCKET));
        std::process::exit(EXIT_SUPERVISOR_DIED);
    });
}

fn write_reply(stream: &mut UnixStream, reply: &Reply) -> std::io::Result<()> {
    let mut line = protocol::encode(reply);
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    stream.flush()
}

fn refuse(stream: &mut UnixStream, error: String) {
    let _ = write_reply(stream, &Reply::Error(Failure::new(error)));
}

/// Counts a connection while it lives.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One control connection: checks the peer, then answers requests until
/// it closes.
fn serve(daemon: &Daemon, mut stream: UnixStream) {
    let _slot = Slot(&daemon.connections);
    if daemon.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
        refuse(
            &mut stream,
            format!(
                "refused: the node already serves {MAX_CONNECTIONS} control connections; try again when one closes"
            ),
        );
        return;
    }
    match rustix::net::sockopt::socket_peercred(&stream) {
        Ok(peer) if peer.uid.as_raw() == daemon.uid => {}
        Ok(peer) => {
            eprintln!(
                "node: refused a control connection from uid {} (pid {:?})",
                peer.uid.as_raw(),
                peer.pid
            );
            refuse(
                &mut stream,
                format!(
                    "refused: the node runs as uid {}, this connection comes from uid {}; run the command as the node's user",
                    daemon.uid,
                    peer.uid.as_raw()
                ),
            );
            return;
        }
        Err(error) => {
            refuse(&mut stream, format!("refused: the peer's credentials are unknown ({error})"));
            return;
        }
    }
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let Ok(reader) = stream.try_clone() else { return };
    let mut reader = BufReader::new(reader);
    loop {
        let mut line = Vec::new();
        match (&mut reader).take(protocol::MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') {
            if line.len() > protocol::MAX_LINE_BYTES {
                refuse(
                    &mut stream,
                    format!(
                        "bad request: the line is longer than {} bytes; the connection is closed",
                        protocol::MAX_LINE_BYTES
                    ),
                );
            }
            // A line cut by the peer's close: nothing to answer.
            return;
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            refuse(&mut stream, "bad request: the line is not UTF-8 text; the connection is closed".into());
            return;
        };
        if text.trim().is_empty() {
            continue;
        }
        let envelope = match protocol::decode_request(text) {
            Ok(envelope) => envelope,
            Err(error) => {
                refuse(&mut stream, error);
                continue;
            }
        };
        let is_stop = envelope.request == Request::Stop;
        let mut progress_stream = stream.try_clone().ok().filter(|_| envelope.progress);
        let mut progress = |step: Progress| {
            if let Some(stream) = progress_stream.as_mut() {
                let _ = write_reply(stream, &Reply::Progress(step));
            }
        };
        if is_stop {
            eprintln!("node: stopping on request");
            let _ = fs::remove_file(daemon.handler.root().join(SOCKET));
        }
        let request = envelope.request;
        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            daemon.handler.handle(request, &mut progress)
        }))
        .unwrap_or_else(|_| {
            Err(Failure::new("the node failed while answering (a bug: see its log); it keeps running"))
        });
        let reply = match answer {
            Ok(response) => Reply::Ok(response),
            Err(failure) => Reply::Error(failure),
        };
        let written = write_reply(&mut stream, &reply);
        if is_stop && matches!(reply, Reply::Ok(Response::Stopped(_))) {
            remove_run_dir(daemon);
            eprintln!("node: stopped on request");
            std::process::exit(0);
        }
        if written.is_err() {
            return;
        }
    }
}
