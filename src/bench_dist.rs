//! `relive bench dist`: messages per second and call round trips across an
//! Erlang distribution link on loopback, for erl ↔ erl, relive ↔ erl and
//! relive ↔ relive, in the same run.
//!
//! The workload is one Erlang module (bench_dist/dist_bench.erl, compiled
//! with `erlc` at run time): a server node registers `dist_bench_sink` and
//! `dist_bench_echo`; a driver node casts N 32-byte binaries to the sink
//! then asks it how many arrived (messages per second), and makes N
//! sequential gen_server calls to the echo (mean and p99 µs). The relive
//! sides run the same protocol with native processes, and the calls have
//! the same shape on the wire both ways: `gen_server:call/3` on the erl
//! side and `Distribution::call` on ours each send MONITOR_P and the
//! request, get the reply, and send DEMONITOR_P.
//!
//! Every node runs under an epmd of its own (a free port, `ERL_EPMD_PORT`)
//! and a random cookie, so the bench neither sees nor disturbs the
//! machine's other Erlang nodes; every child is killed when the bench ends,
//! however it ends.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use relive_dist::{DistConfig, Distribution, Term, term};
use relive_runtime::{Actor, Ctx, Message, Node, NodeConfig, RemoteMessage, ReplyTo};
use serde::{Deserialize, Serialize};

const ERLANG_SOURCE: &str = include_str!("bench_dist/dist_bench.erl");

/// One side-pair's figures.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct DistFigures {
    pub msgs_per_sec: f64,
    pub call_mean_us: f64,
    pub call_p99_us: f64,
}

/// A child process killed (and reaped) when dropped.
struct KillOnDrop {
    child: Child,
    what: String,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An isolated Erlang world: its own epmd, cookie and compiled bench module.
/// Dropped in field order: the nodes, then epmd, then the files.
pub struct ErlWorld {
    servers: Vec<KillOnDrop>,
    _epmd: KillOnDrop,
    epmd_port: u16,
    cookie: String,
    host: String,
    dir: tempfile::TempDir,
}

impl ErlWorld {
    /// Starts epmd on a free port and compiles the bench module.
    ///
    /// # Errors
    /// `erl`, `erlc` or `epmd` missing (Debian's erlang-nox has them), or
    /// epmd not answering.
    pub fn start() -> anyhow::Result<ErlWorld> {
        for tool in ["erl", "erlc", "epmd"] {
            if which(tool).is_none() {
                bail!(
                    "relive bench dist needs `{tool}` on PATH: install Erlang (Debian: apt-get install erlang-nox)"
                );
            }
        }
        let dir = tempfile::Builder::new().prefix("relive-bench-dist-").tempdir()?;
        let source = dir.path().join("dist_bench.erl");
        std::fs::write(&source, ERLANG_SOURCE).with_context(|| format!("writing {}", source.display()))?;
        let status =
            Command::new("erlc").arg("-o").arg(dir.path()).arg(&source).status().context("running erlc")?;
        if !status.success() {
            bail!("erlc could not compile {} ({status})", source.display());
        }
        let epmd_port = free_port()?;
        let epmd = Command::new("epmd")
            .args(["-port", &epmd_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting epmd")?;
        let epmd = KillOnDrop { child: epmd, what: format!("epmd on port {epmd_port}") };
        wait_for_port(epmd_port, Duration::from_secs(10))
            .with_context(|| format!("{} did not answer", epmd.what))?;
        let cookie = format!("relive_bench_{:016x}", rand_u64());
        Ok(ErlWorld { servers: Vec::new(), _epmd: epmd, epmd_port, cookie, host: short_hostname()?, dir })
    }

    /// `name@host` for a short name.
    pub fn node_name(&self, name: &str) -> String {
        format!("{name}@{}", self.host)
    }

    /// A directory for files of this run (cookie files and the like).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn erl(&self, name: &str) -> Command {
        let mut command = Command::new("erl");
        command
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .args(["-sname", name, "-setcookie", &self.cookie, "-noshell", "-hidden", "-pa"])
            .arg(self.dir.path());
        command
    }

    /// Starts an `erl` node serving the sink and echo; returns its node name
    /// once it is registered in epmd.
    ///
    /// # Errors
    /// `erl` failing to start or to register within 30 s.
    pub fn start_erl_server(&mut self, name: &str) -> anyhow::Result<String> {
        let child = self
            .erl(name)
            .args(["-eval", "dist_bench:serve()"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting erl")?;
        self.servers.push(KillOnDrop { child, what: format!("erl node {name}") });
        let node = self.node_name(name);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.registered(name)? {
            if Instant::now() > deadline {
                bail!("erl node {node} did not register in epmd (port {}) within 30 s", self.epmd_port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(node)
    }

    /// Whether `name` is registered in this world's epmd.
    pub fn registered(&self, name: &str) -> anyhow::Result<bool> {
        let out = Command::new("epmd")
            .args(["-port", &self.epmd_port.to_string(), "-names"])
            .output()
            .context("running epmd -names")?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .any(|line| line.strip_prefix("name ").and_then(|rest| rest.split(' ').next()) == Some(name)))
    }

    /// Runs an `erl` driver against `server` (a node name) and returns its
    /// figures.
    ///
    /// # Errors
    /// The driver failing, timing out after 10 minutes, or printing no
    /// figures.
    pub fn erl_drive(&self, name: &str, server: &str, sends: u64, calls: u64) -> anyhow::Result<DistFigures> {
        let eval = format!("dist_bench:drive('{server}', {sends}, {calls})");
        let child = self
            .erl(name)
            .args(["-eval", &eval])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the erl driver")?;
        let mut guard = KillOnDrop { child, what: format!("erl driver {name}") };
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Some(status) = guard.child.try_wait()? {
                let mut stdout = String::new();
                let mut stderr = String::new();
                if let Some(mut out) = guard.child.stdout.take() {
                    out.read_to_string(&mut stdout)?;
                }
                if let Some(mut err) = guard.child.stderr.take() {
                    err.read_to_string(&mut stderr)?;
                }
                if !status.success() {
                    bail!(
                        "the erl driver against {server} failed ({status}): {}{}",
                        stdout.trim(),
                        stderr.trim()
                    );
                }
                let line = stdout.lines().find(|line| line.starts_with('{')).with_context(|| {
                    format!("the erl driver against {server} printed no figures: {stdout}")
                })?;
                return serde_json::from_str(line)
                    .with_context(|| format!("the erl driver's figures are not JSON: {line}"));
            }
            if Instant::now() > deadline {
                bail!("{} did not finish within 10 minutes", guard.what);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(tool))
        .find(|path| path.is_file())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(port: u16, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on port {port} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The host part erl gives `-sname` nodes: the hostname up to its first dot.
fn short_hostname() -> anyhow::Result<String> {
    let out = Command::new("hostname").output().context("running hostname")?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let short = name.split('.').next().unwrap_or_default().to_owned();
    if short.is_empty() {
        bail!("`hostname` printed no name; erl -sname needs one");
    }
    Ok(short)
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
    );
    hasher.finish()
}

// ---------------------------------------------------------------------------
// The relive sides.

/// The environment variable that hands a served bench node its cookie file
/// (never the cookie itself on a command line).
const COOKIE_FILE_ENV: &str = "RELIVE_BENCH_DIST_COOKIE_FILE";

/// 32 bytes, as the Erlang side's payload.
fn payload() -> Term {
    term::binary(b"0123456789abcdef0123456789abcdef".to_vec())
}

fn count_term() -> Term {
    term::binary(b"count".to_vec())
}

/// Counts what it receives; a `count` call answers the count and resets it.
struct Sink(u64);

impl Actor for Sink {
    fn handle(&mut self, _message: Message, _ctx: &mut Ctx<'_>) {
        self.0 += 1;
    }

    fn handle_call(&mut self, _request: Message, reply: ReplyTo, _ctx: &mut Ctx<'_>) {
        let count = std::mem::take(&mut self.0);
        reply.reply_with(relive_dist::encode(&Term::from(eetf::BigInteger::from(count))));
    }
}

/// Answers every call with its request, as it came.
struct Echo;

impl Actor for Echo {
    fn handle(&mut self, _message: Message, _ctx: &mut Ctx<'_>) {}

    fn handle_call(&mut self, request: Message, reply: ReplyTo, _ctx: &mut Ctx<'_>) {
        match request.downcast::<RemoteMessage>() {
            Ok(request) => reply.reply_with(request.term),
            Err(_) => reply.reply_with(relive_dist::encode(&term::atom("not_a_term"))),
        }
    }
}

/// `relive bench dist --serve-as NAME`: a relive node serving the sink and
/// the echo until its stdin closes (the bench that started it ended).
pub fn serve(name: &str) -> anyhow::Result<()> {
    let cookie_file =
        std::env::var_os(COOKIE_FILE_ENV).context("the served bench node needs its cookie file")?;
    let cookie = relive_dist::cookie::read_or_create(Some(Path::new(&cookie_file)))?;
    let node = Node::start(NodeConfig::default());
    let mut config = DistConfig::new(name, cookie);
    config.start_epmd = false;
    config.listen_address = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let dist = Distribution::start(&node, config)?;
    let sink = node.spawn(Sink(0)).map_err(|e| anyhow::anyhow!("{e}"))?;
    node.register("dist_bench_sink", sink).map_err(|e| anyhow::anyhow!("{e}"))?;
    let echo = node.spawn(Echo).map_err(|e| anyhow::anyhow!("{e}"))?;
    node.register("dist_bench_echo", echo).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("ready {}", dist.name());
    std::io::stdout().flush()?;
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    dist.stop();
    node.shutdown();
    Ok(())
}

impl ErlWorld {
    fn cookie_file(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir().join("cookie");
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file =
                std::fs::OpenOptions::new().write(true).create_new(true).mode(0o400).open(&path)?;
            file.write_all(self.cookie.as_bytes())?;
        }
        Ok(path)
    }

    /// Starts `relive bench dist --serve-as NAME` (this binary) and returns
    /// its node name once it is ready.
    ///
    /// # Errors
    /// The child failing to start or to say it is ready within 30 s.
    pub fn start_relive_server(&mut self, name: &str) -> anyhow::Result<String> {
        let exe = std::env::current_exe().context("finding this relive binary")?;
        let mut child = Command::new(exe)
            .args(["bench", "dist", "--serve-as", name])
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env(COOKIE_FILE_ENV, self.cookie_file()?)
            // Its log (a line per closed connection) would bury the figures.
            .env("RELIVE_LOG", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a relive bench node")?;
        let stdout = child.stdout.take().expect("piped");
        self.servers.push(KillOnDrop { child, what: format!("relive bench node {name}") });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .with_context(|| format!("the relive bench node {name} did not say it was ready within 30 s"))?;
        line.trim()
            .strip_prefix("ready ")
            .map(str::to_owned)
            .with_context(|| format!("the relive bench node {name} failed to start (it printed {line:?})"))
    }

    /// Drives `server` from a hidden relive node in this process.
    ///
    /// # Errors
    /// Distribution failing, or a count that does not match what was sent.
    pub fn relive_drive(
        &self,
        name: &str,
        server: &str,
        sends: u64,
        calls: u64,
    ) -> anyhow::Result<DistFigures> {
        let mut config = DistConfig::new(name, self.cookie.clone());
        config.epmd_port = self.epmd_port;
        config.start_epmd = false;
        config.listen_address = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        let dist = Distribution::start_client(config)?;
        let result = drive(&dist, server, sends, calls);
        dist.stop();
        result
    }
}

fn drive(dist: &Distribution, server: &str, sends: u64, calls: u64) -> anyhow::Result<DistFigures> {
    let timeout = Duration::from_secs(60);
    let count = |dist: &Distribution| -> anyhow::Result<u64> {
        let reply = dist.call(server, "dist_bench_sink", count_term(), timeout)?;
        match reply {
            Term::FixInteger(n) => Ok(u64::try_from(n.value)?),
            Term::BigInteger(n) => Ok(u64::try_from(&n.value)?),
            other => bail!("the sink on {server} answered {other}"),
        }
    };
    let payload = payload();
    if count(dist)? != 0 {
        bail!("the sink on {server} had messages before the run");
    }
    for _ in 0..1000 {
        dist.call(server, "dist_bench_echo", payload.clone(), timeout)?;
    }
    for _ in 0..10_000 {
        dist.send(server, "dist_bench_sink", &payload)?;
    }
    if count(dist)? != 10_000 {
        bail!("the sink on {server} lost warm-up messages");
    }
    let started = Instant::now();
    for _ in 0..sends {
        dist.send(server, "dist_bench_sink", &payload)?;
    }
    let arrived = count(dist)?;
    let elapsed = started.elapsed();
    if arrived != sends {
        bail!("{arrived} of {sends} messages reached the sink on {server}");
    }
    let mut rtts = Vec::with_capacity(calls as usize);
    for _ in 0..calls {
        let started = Instant::now();
        let reply = dist.call(server, "dist_bench_echo", payload.clone(), timeout)?;
        rtts.push(started.elapsed());
        if reply != payload {
            bail!("the echo on {server} answered {reply}");
        }
    }
    rtts.sort_unstable();
    let mean = rtts.iter().sum::<Duration>().as_secs_f64() * 1e6 / calls.max(1) as f64;
    let p99 = rtts
        .get(((calls as f64 * 0.99).ceil() as usize).saturating_sub(1).min(rtts.len().saturating_sub(1)))
        .map_or(0.0, |d| d.as_secs_f64() * 1e6);
    Ok(DistFigures {
        msgs_per_sec: sends as f64 / elapsed.as_secs_f64(),
        call_mean_us: mean,
        call_p99_us: p99,
    })
}

/// The bench: each pair `runs` times, medians, and the ratios to erl ↔ erl.
pub fn run(sends: u64, calls: u64, runs: usize, json: bool) -> anyhow::Result<()> {
    let mut world = ErlWorld::start()?;
    let erl_server = world.start_erl_server("bench_erl_server")?;
    let relive_server = world.start_relive_server("bench_relive_server")?;
    let mut pairs: Vec<(&str, Vec<DistFigures>)> = Vec::new();
    for run in 0..runs {
        let figures = [
            ("erl_to_erl", world.erl_drive(&format!("bench_erl_driver_{run}"), &erl_server, sends, calls)?),
            (
                "relive_to_relive",
                world.relive_drive(&format!("bench_relive_driver_{run}"), &relive_server, sends, calls)?,
            ),
            (
                "relive_to_erl",
                world.relive_drive(&format!("bench_relive_driver_e{run}"), &erl_server, sends, calls)?,
            ),
            (
                "erl_to_relive",
                world.erl_drive(&format!("bench_erl_driver_r{run}"), &relive_server, sends, calls)?,
            ),
        ];
        for (name, figure) in figures {
            if !json {
                eprintln!(
                    "run {}: {name:17} {:>10.0} msgs/s  call mean {:>7.2} µs  p99 {:>8.2} µs",
                    run + 1,
                    figure.msgs_per_sec,
                    figure.call_mean_us,
                    figure.call_p99_us
                );
            }
            match pairs.iter_mut().find(|(n, _)| *n == name) {
                Some((_, list)) => list.push(figure),
                None => pairs.push((name, vec![figure])),
            }
        }
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let medians: Vec<(&str, DistFigures)> = pairs
        .iter()
        .map(|(name, list)| {
            let pick = |f: fn(&DistFigures) -> f64| median(&mut list.iter().map(f).collect());
            (
                *name,
                DistFigures {
                    msgs_per_sec: pick(|f| f.msgs_per_sec),
                    call_mean_us: pick(|f| f.call_mean_us),
                    call_p99_us: pick(|f| f.call_p99_us),
                },
            )
        })
        .collect();
    let base = medians[0].1;
    if json {
        let mut object = serde_json::Map::new();
        object.insert("bench".into(), "dist".into());
        object.insert("sends".into(), sends.into());
        object.insert("calls".into(), calls.into());
        object.insert("runs".into(), runs.into());
        for (name, figures) in &medians {
            let mut entry = serde_json::to_value(figures)?;
            entry["msgs_ratio_to_erl"] = (figures.msgs_per_sec / base.msgs_per_sec).into();
            entry["call_ratio_to_erl"] = (base.call_mean_us / figures.call_mean_us).into();
            object.insert((*name).into(), entry);
        }
        println!("{}", serde_json::Value::Object(object));
    } else {
        println!("dist on loopback, medians of {runs} ({sends} casts, {calls} calls of a 32-byte binary):");
        for (name, figures) in &medians {
            println!(
                "  {name:17} {:>10.0} msgs/s ({:.2}x erl)  call mean {:>7.2} µs ({:.2}x erl's speed)  p99 {:>8.2} µs",
                figures.msgs_per_sec,
                figures.msgs_per_sec / base.msgs_per_sec,
                figures.call_mean_us,
                base.call_mean_us / figures.call_mean_us,
                figures.call_p99_us
            );
        }
    }
    Ok(())
}
